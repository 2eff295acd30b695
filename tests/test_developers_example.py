"""DEVELOPERS.md's worked example ("Adding a bijector") is a complete bijector: the block is
read from the file, executed, registered as a temporary case and put through the property
suite (tests/test_properties.py) and a model-file round trip. A planted bug in the same source
(a pullback term with the wrong sign) must make the suite fail, so the check is not vacuous."""

import pathlib
import re

import numpy as np
import pytest

import refflow
from refflow._cases import _case, _normal
from refflow.io import spec

from . import test_properties as properties
from .registry import CASES

DEVELOPERS = pathlib.Path(__file__).resolve().parents[1] / "DEVELOPERS.md"
MARKER = "<!-- the example run by tests/test_developers_example.py -->"
CASE = "developers_example"


def example_source():
    text = DEVELOPERS.read_text()
    assert MARKER in text, "the marked example is missing from DEVELOPERS.md"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.S)
    return block.group(1)


def load_example(source):
    namespace = {}
    exec(compile(source, str(DEVELOPERS), "exec"), namespace)
    return namespace["Scale"]


def randomized(cls):
    def build(rng):
        layer = cls(3)
        layer.params["log_scale"] = rng.normal(0.0, 0.5, size=3)
        return layer
    return _case(build, _normal(), _normal(2.0))


def run_property_suite():
    """Every test of the property suite, on the temporary case."""
    properties.test_round_trips_and_log_dets(CASE)
    properties.test_forward_pullback(CASE)
    properties.test_inverse_pullback(CASE)
    for direction in ("forward", "inverse"):
        properties.test_grads_match_params(CASE, direction)
        properties.test_float32_in_float32_out(CASE, direction)
        properties.test_vjp_pass_gives_the_plain_pass_outputs(CASE, direction)
        properties.test_single_point_and_batch_of_one(CASE, direction)
        for dtype in (np.float64, np.float32):
            properties.test_empty_batch(CASE, direction, dtype)


def test_example_is_about_thirty_lines():
    lines = [line for line in example_source().splitlines() if line.strip()]
    assert len(lines) <= 40, len(lines)


def test_example_passes_the_property_suite(monkeypatch):
    cls = load_example(example_source())
    monkeypatch.setitem(CASES, CASE, randomized(cls))
    run_property_suite()


def test_example_round_trips_through_a_model_file(monkeypatch, tmp_path):
    cls = load_example(example_source())
    monkeypatch.setitem(spec._REGISTRY, cls.__name__, cls)
    layer = randomized(cls)(0)[0]
    path = tmp_path / "scale.npz"
    refflow.save(path, layer)
    loaded = refflow.load(path)
    assert type(loaded) is cls
    z = np.random.default_rng(1).normal(size=(4, 3))
    np.testing.assert_array_equal(loaded.forward(z)[0], layer.forward(z)[0])


def test_a_planted_bug_in_the_example_is_caught(monkeypatch):
    source = example_source()
    wrong = "(x_bar * x).sum(axis=0) - log_det_bar.sum()"
    buggy = source.replace("(x_bar * x).sum(axis=0) + log_det_bar.sum()", wrong)
    assert buggy != source
    monkeypatch.setitem(CASES, CASE, randomized(load_example(buggy)))
    with pytest.raises(AssertionError, match="log_scale"):
        properties.test_forward_pullback(CASE)
