"""The one fast/reference switch, ``refflow.kernels.fast_paths`` / ``use_fast_paths``."""

import threading

import pytest

import refflow.kernels as kernels
from refflow.kernels import PATHS, fast_paths, use_fast_paths


def _state():
    return {name: use_fast_paths(name) for name in PATHS}


def test_default_every_path_on_with_numba():
    if kernels.NUMBA_DISABLED:
        pytest.skip("REFFLOW_DISABLE_NUMBA=1: the compiled paths default off")
    assert all(_state().values())


def test_default_without_numba_keeps_only_the_numpy_paths(monkeypatch):
    monkeypatch.setattr(kernels, "NUMBA_DISABLED", True)
    assert _state() == {name: not compiled for name, compiled in PATHS.items()}
    with fast_paths(True):                          # forced on, as the parity tests do
        assert all(_state().values())


def test_off_on_nested_and_restored():
    before = _state()
    with fast_paths(False):
        assert not any(_state().values())
        with fast_paths(True, paths=["made"]):
            assert _state() == {name: name == "made" for name in PATHS}
        assert not any(_state().values())
    assert _state() == before


def test_only_the_named_paths_change():
    before = _state()
    with fast_paths(False, paths=("splines", "sampling")):
        after = _state()
    assert after == {**before, "splines": False, "sampling": False}
    with fast_paths(False, paths="optim"):          # one name as a string
        assert _state() == {**before, "optim": False}


def test_exception_inside_restores_the_setting():
    before = _state()
    with pytest.raises(RuntimeError):
        with fast_paths(False):
            raise RuntimeError("boom")
    assert _state() == before


def test_decorator():
    @fast_paths(False, paths=["mlp"])
    def inside():
        return use_fast_paths("mlp")

    before = use_fast_paths("mlp")
    assert inside() is False
    assert use_fast_paths("mlp") == before


def test_local_to_the_thread():
    seen = {}

    def other():
        seen["made"] = use_fast_paths("made")

    with fast_paths(False):
        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
        assert use_fast_paths("made") is False
    assert seen["made"] is True                     # a new thread starts at the default


@pytest.mark.parametrize("bad", [1, 0, None, "yes"])
def test_enabled_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="fast_paths: enabled must be True or False"):
        with fast_paths(bad):
            pass


def test_unknown_path_is_refused_and_changes_nothing():
    before = _state()
    with pytest.raises(ValueError, match="unknown path.*'blas'"):
        with fast_paths(False, paths=["made", "blas"]):
            pass
    assert _state() == before
