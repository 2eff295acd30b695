"""The shared scalar checks of ``refflow._validation``: TypeError for a value of the wrong type,
ValueError for a value of the right type out of range, one-line messages naming the caller and
the argument, values returned as plain Python types."""

import math

import numpy as np
import pytest

from refflow._validation import (check_batch_size, check_bool, check_choice,
                                 check_context_given, check_option, check_dim, check_hidden, check_int,
                                 check_n, check_positive, check_real, check_same_keys,
                                 empty_output)


def _raises(error, fn, *args, **kwargs):
    """The message of the ``error`` that ``fn`` raises, checked to be one line naming ``where``."""
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert type(info.value) is error  # not a subclass standing in for the other type
    assert message.startswith("where: ") and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------ integers
@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3)])
def test_check_int_accepts_python_and_numpy_integers(value):
    out = check_int(value, "where", "k", minimum=1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [2.0, 2.5, "3", None, True, np.bool_(True), [3]])
def test_check_int_wrong_type_is_a_type_error(value):
    message = _raises(TypeError, check_int, value, "where", "k", minimum=1)
    assert "k must be an integer" in message and type(value).__name__ in message


@pytest.mark.parametrize("minimum, value, words", [(1, 0, "a positive integer"),
                                                   (0, -1, "a non-negative integer"),
                                                   (2, 1, "an integer >= 2")])
def test_check_int_below_minimum_is_a_value_error(minimum, value, words):
    message = _raises(ValueError, check_int, value, "where", "k", minimum=minimum)
    assert f"k must be {words}, got {value}" in message
    assert check_int(minimum, "where", "k", minimum=minimum) == minimum  # the bound is allowed


def test_check_dim_n_and_batch_size():
    assert check_dim(np.int32(4), "where") == 4
    assert "dim must be a positive integer" in _raises(ValueError, check_dim, 0, "where")
    _raises(TypeError, check_dim, 4.0, "where")
    assert check_n(0, "where") == 0
    assert "the number of samples n" in _raises(ValueError, check_n, -1, "where")
    _raises(TypeError, check_n, 1.0, "where")
    assert check_batch_size(None, "where") is None
    assert check_batch_size(None, "where", default=7) == 7
    assert check_batch_size(np.int64(5), "where") == 5
    assert "batch_size must be a positive integer or None" in _raises(
        ValueError, check_batch_size, 0, "where")
    _raises(TypeError, check_batch_size, 2.0, "where")
    _raises(TypeError, check_batch_size, False, "where")


# ------------------------------------------------------------------------------ reals
@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.int64(1)])
def test_check_real_accepts_real_numbers_and_returns_a_float(value):
    out = check_real(value, "where", "x", low=0.0, high=1.0)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", ["0.5", None, True, np.bool_(False), 1j, [0.5]])
def test_check_real_wrong_type_is_a_type_error(value):
    assert "x must be a real number" in _raises(TypeError, check_real, value, "where", "x")


@pytest.mark.parametrize("kwargs, value, words", [
    ({}, math.nan, "a finite number"),
    ({}, -math.inf, "a finite number"),
    ({"low": 0.0, "low_open": True}, 0.0, "a finite positive number"),
    ({"low": 0.0}, -1e-300, "a finite non-negative number"),
    ({"low": 0.0, "high": 1.0, "high_open": True}, 1.0, "a finite number in [0, 1)"),
    ({"low": 0.0, "high": 1.0}, 1.5, "a finite number in [0, 1]"),
    ({"high": 2.0, "high_open": True}, 2.0, "a finite number in (-inf, 2)"),
    ({"low": 0.5}, 0.25, "a finite number in [0.5, inf)"),
])
def test_check_real_out_of_range_is_a_value_error(kwargs, value, words):
    message = _raises(ValueError, check_real, value, "where", "x", **kwargs)
    assert f"x must be {words}, got" in message


def test_check_real_interval_ends():
    assert check_real(0.0, "where", "x", low=0.0) == 0.0
    assert check_real(1.0, "where", "x", high=1.0) == 1.0
    _raises(ValueError, check_real, 1.0, "where", "x", high=1.0, high_open=True)
    assert check_positive(1e-300, "where", "x") == 1e-300
    _raises(ValueError, check_positive, 0.0, "where", "x")
    _raises(TypeError, check_positive, "1", "where", "x")


# ------------------------------------------------------------------ bools, choices, widths
def test_check_bool():
    assert check_bool(np.bool_(True), "where", "flag") is True
    assert check_bool(None, "where", "flag", allow_none=True) is None
    for bad in (1, 0, "yes", None):
        _raises(TypeError, check_bool, bad, "where", "flag")


def test_check_choice():
    assert check_choice("b", ("a", "b"), "where", "mode") == "b"
    assert "mode must be one of ['a', 'b'], got 'c'" in _raises(
        ValueError, check_choice, "c", ("b", "a"), "where", "mode")
    _raises(TypeError, check_choice, None, ("a", "b"), "where", "mode")


def test_check_option_lists_every_accepted_value():
    assert check_option("auto", ("auto",), "where", "whiten", booleans=True) == "auto"
    assert check_option(np.bool_(False), ("auto",), "where", "whiten", booleans=True) is False
    assert check_option(None, ("a", "b"), "where", "mode", none=True) is None
    assert "where: whiten must be 'auto', True or False, got 'yes'" in _raises(
        ValueError, check_option, "yes", ("auto",), "where", "whiten", booleans=True)
    assert "where: whiten must be 'auto', True or False, got " in _raises(
        TypeError, check_option, None, ("auto",), "where", "whiten", booleans=True)
    assert "where: mode must be 'a', 'b' or None, got int 1" in _raises(
        TypeError, check_option, 1, ("a", "b"), "where", "mode", none=True)
    assert "where: mode must be 'a', got bool True" in _raises(
        TypeError, check_option, True, ("a",), "where", "mode")
    assert "where: mode must be 'a', 'b', True, False or None, got 'c'" in _raises(
        ValueError, check_option, "c", ("a", "b"), "where", "mode", booleans=True, none=True)


def test_check_hidden():
    assert check_hidden([np.int64(8), 4], "where") == (8, 4)
    assert check_hidden((), "where") == ()
    for bad in (64, "64", 6.4, None):
        assert "hidden must be a sequence" in _raises(TypeError, check_hidden, bad, "where")
    assert "hidden width must be a positive integer" in _raises(
        ValueError, check_hidden, (8, 0), "where")
    _raises(TypeError, check_hidden, (8, 2.0), "where")


def test_long_values_are_shortened_to_one_line():
    message = _raises(TypeError, check_int, np.zeros((50, 50)), "where", "k")
    assert len(message) < 150


def test_check_same_keys_names_missing_and_unexpected():
    check_same_keys({"a": 1, "b": 2}, {"b": 0, "a": 0}, "load")        # same keys, any order
    with pytest.raises(ValueError) as err:
        check_same_keys({"a": 1, "z": 2, "y": 3}, ["a", "c", "b"], "load", what="parameters")
    assert str(err.value) == ("load: parameters differ (missing ['b', 'c'], "
                              "unexpected ['y', 'z'])")


def test_check_context_given_both_mismatches():
    assert check_context_given(None, None, "Flow.log_prob", "flow", "a context") is False
    assert check_context_given(np.zeros(3), 3, "Flow.log_prob", "flow", "a context") is True
    with pytest.raises(ValueError) as err:
        check_context_given(np.zeros(3), None, "Flow.log_prob", "flow", "a context")
    assert str(err.value) == "Flow.log_prob: the flow is unconditional, but a context was given"
    with pytest.raises(ValueError) as err:
        check_context_given(None, 3, "Flow.sample", "model", "context")
    assert str(err.value) == ("Flow.sample: the model is conditional; pass context of shape "
                              "(n, 3) or (3,)")


def test_empty_output_too_large_says_how_much_memory():
    out = empty_output((2, 3), "Flow.sample")
    assert out.shape == (2, 3) and out.dtype == np.float64
    with pytest.raises(ValueError) as err:
        empty_output((2 ** 40, 2 ** 20), "Flow.sample")        # 8 EiB: refused by NumPy
    assert str(err.value) == ("Flow.sample: an output of shape (1099511627776, 1048576) needs "
                              "8.59e+09 GiB of memory, more than is available; ask for fewer "
                              "rows")
