"""``refflow.audit`` and ``python -m refflow audit LIBRARY``: one small class subset per installed
peer (fast: one size, float64 unless said), the JSON shape, the exit codes (0 clean, 1 on a
failure, 2 for a library that is not installed or a class it does not export), classes not built
listed with their reason. Each peer's test skips cleanly without the peer."""

import importlib
import json

import numpy as np
import pytest

from refflow.__main__ import main
from refflow.audit import audit, catalogue, peers, register, unregister
from refflow.audit.core import run_recipe
from refflow.audit.recipes import CONTEXT, RECIPES

#: The module (the package's ``catalogue`` attribute is the function of that name).
catalogue_module = importlib.import_module("refflow.audit.catalogue")

#: One quick class per peer (a layer with parameters, so that gradients are checked too).
QUICK = {"zuko": ("zuko", "MonotonicAffineTransform"), "nflows": ("nflows", "LULinear"),
         "normflows": ("normflows", "LULinearPermute"), "pyro": ("pyro", "Householder"),
         "flowjax": ("flowjax", "Affine"), "distrax": ("distrax", "ScalarAffine"),
         "tfp": ("tensorflow_probability", "Shift")}
ROW_KEYS = {"library", "class", "variant", "dim", "dtype", "verdict", "checks", "worst_error",
            "not_passed", "reason", "reproducer"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: a second intra-op thread only adds spin-waits; restored afterwards."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _need(library):
    module = QUICK[library][0]
    if library in ("flowjax", "distrax", "tfp"):
        pytest.importorskip("jax")
    else:
        pytest.importorskip("torch")
    pytest.importorskip(module)


def _lines(capsys):
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("library", sorted(QUICK))
def test_command_on_one_class(library, tmp_path, capsys):
    _need(library)
    cls = QUICK[library][1]
    path = tmp_path / "audit.json"
    md = tmp_path / "audit.md"
    status = main(["audit", library, "--only", cls, "--sizes", "2", "--dtypes", "float64",
                   "--json", str(path), "--markdown", str(md)])
    out, err = _lines(capsys)
    assert status == 0, out + err
    doc = json.loads(path.read_text())
    assert doc["library"] == library and doc["version"] != "unknown"
    assert doc["command"] == f"python -m refflow audit {library} --only {cls} --sizes 2 " \
                             f"--dtypes float64 --seed 0"
    assert doc["rows"], doc
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS
        assert row["class"] == cls and row["dim"] == 2 and row["dtype"] == "float64"
        assert row["verdict"] == "pass", row
        assert row["checks"] >= 5 and 0 <= row["worst_error"] < 1e-6
    text = md.read_text()
    assert text.startswith(f"# Audit of {library} ") and doc["command"] in text
    assert f"| {cls} |" in text and cls in out


def test_float32_rows_are_checked_against_the_float64_twin(capsys):
    _need("nflows")
    report = audit("nflows", only=["ActNorm"], sizes=(3,), dtypes=("float32",))
    (row,) = report.rows
    assert row.dtype == "float32" and row.verdict == "pass", row.as_dict()
    labels = [line.label for line in row.report.reports["bijector"].lines]
    assert any("float64 twin" in label for label in labels), labels
    # float32 is not float64: the twin comparison sees float32 rounding, far above 1e-12
    assert 1e-9 < row.worst_error < 1e-4


def _broken_toy(dim):
    """x = 2 z + 1 with the inverse's log-det of the wrong sign: a deliberate failure."""
    def build(seed):
        import torch

        from refflow.audit import peers

        class Toy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.log_scale = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))

            def forward(self, z):
                return z * self.log_scale.exp() + 1, self.log_scale.sum().expand(len(z))

            def inverse(self, x):
                return (x - 1) / self.log_scale.exp(), self.log_scale.sum().expand(len(x))

        module = peers.randomize_torch(Toy(), seed)
        return peers.torch_layer(module, lambda m, z: m(z), lambda m, x: m.inverse(x),
                                 peers.normal_points(seed, peers.N_POINTS, dim))
    return build


def test_a_failure_exits_1_with_a_reproducer(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("nflows")
    entry = register("nflows", "BrokenToy", _broken_toy, why="a deliberately wrong log-det")
    try:
        path = tmp_path / "audit.json"
        status = main(["audit", "nflows", "--only", "BrokenToy", "--sizes", "2",
                       "--dtypes", "float64", "--json", str(path)])
    finally:
        unregister("nflows", "BrokenToy", entry)
    out, err = _lines(capsys)
    assert status == 1, out + err
    (row,) = json.loads(path.read_text())["rows"]
    assert row["verdict"] == "fail"
    assert "bijector: log_det inverse vs FD (fail)" in row["not_passed"]
    assert row["reproducer"].startswith("python -m refflow audit nflows --only BrokenToy "
                                        "--sizes 2 --dtypes float64 --seed 0")
    assert "FAIL BrokenToy" in out
    with pytest.raises(ValueError, match="no class 'BrokenToy'"):
        audit("nflows", only=["BrokenToy"])          # unregistered: gone


def test_missing_library_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(catalogue_module.MODULES, "tfp",
                        ("refflow_no_such_peer", ("refflow_no_such_peer.bijectors",),
                         ("refflow_no_such_peer.Bijector",)))
    status = main(["audit", "tfp"])
    out, err = _lines(capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("refflow audit: error: tfp is not installed")


def test_unknown_class_and_bad_outputs_are_refused_before_work(tmp_path, capsys):
    _need("nflows")
    assert main(["audit", "nflows", "--only", "NoSuchLayer"]) == 2
    out, err = _lines(capsys)
    assert "nflows exports no class 'NoSuchLayer'" in err and err.count("\n") == 1
    assert main(["audit", "nflows", "--json", str(tmp_path / "missing" / "a.json")]) == 1
    out, err = _lines(capsys)
    assert "does not exist" in err and out == ""
    assert main(["audit", "nflows", "--markdown", str(tmp_path / "a.txt")]) == 1
    assert "Markdown report must be a .md file" in _lines(capsys)[1]
    with pytest.raises(SystemExit) as exc:
        main(["audit", "nflows", "--dtypes", "float16"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["audit", "nflows", "--sizes", "1"])


def test_classes_not_built_are_listed_with_the_reason():
    _need("nflows")
    kinds = {name: (kind, reason) for name, kind, reason in catalogue("nflows")}
    assert kinds["Transform"][0] == "abstract"
    assert kinds["InputOutsideDomain"][0] == "not a bijector"
    assert kinds["LULinear"] == ("bijector", "")
    report = audit("nflows", only=["Transform", "InputOutsideDomain", "OneByOneConvolution",
                                   "CompositeCDFTransform"])
    reasons = {r.cls: (r.verdict, r.reason) for r in report.rows}
    assert reasons == {
        "Transform": ("skipped", "base class"),
        "InputOutsideDomain": ("skipped", "not a subclass of Transform"),
        "OneByOneConvolution": ("skipped", "image layer (convolutions on (C, H, W))"),
        "CompositeCDFTransform": ("skipped", "no recipe")}
    assert report.ok and "4 skipped" in report.summary()


def test_torch_reexports_are_listed_not_hidden():
    pytest.importorskip("torch")
    pytest.importorskip("pyro")
    kinds = {name: (kind, reason) for name, kind, reason in catalogue("pyro")}
    assert kinds["ExpTransform"] == ("re-export", "re-export of "
                                     "torch.distributions.transforms.ExpTransform")
    assert kinds["Spline"][0] == "bijector"


def test_bad_arguments_change_nothing():
    for kwargs, match in [(dict(dtypes=("float16",)), "dtypes"), (dict(sizes=(1,)), "sizes"),
                          (dict(seed=-1), "seed")]:
        with pytest.raises(ValueError, match=match):
            audit("nflows", **kwargs)
    with pytest.raises(ValueError, match="unknown library 'numpyro'"):
        audit("numpyro")
    with pytest.raises(TypeError, match="factory must be callable"):
        register("nflows", "X", None)


#: One conditional class per torch peer (FlowJAX's and TFP's conditional recipes take 25-55 s
#: of JIT compilation on a shared machine: they run in the full audits, not here; distrax's
#: bijectors take no context).
CONDITIONAL = {"zuko": "MAF", "nflows": "MaskedAffineAutoregressiveTransform",
               "normflows": "MaskedAffineAutoregressive", "pyro": "ConditionalAffineCoupling"}


def _variant(library, cls, prefix):
    (entry,) = [e for e in RECIPES[library][cls] if e.label.startswith(prefix)]
    return entry


@pytest.mark.parametrize("library", sorted(CONDITIONAL))
def test_conditional_recipe_holds_its_context_fixed(library, monkeypatch):
    """The context=2 variant passes, and its context reaches the layer: the same parameters
    with another context give another map."""
    _need(library)
    cls = CONDITIONAL[library]
    entry = _variant(library, cls, CONTEXT)
    report = run_recipe(library, cls, entry, 3, "float64")
    assert report.verdict == "pass", report
    assert {"bijector", "forward_vjp", "inverse_vjp"} <= set(report.reports)
    z = peers.normal_points(5, peers.N_POINTS, 3)
    before = entry.factory(3)(0)["forward"](z)
    monkeypatch.setattr(peers, "context_vector", lambda seed, k: np.zeros(k))
    after = entry.factory(3)(0)["forward"](z)
    assert np.abs(before[0] - after[0]).max() > 1e-3


def test_bound_points_keep_finite_differences_off_the_bound():
    """The boundary points sit NEAR_BOUND B inside and outside +-B: more than ten first-pass
    finite-difference steps (eps^(1/3) |x|) away, so central differences do not straddle the
    bound, where a spline is only piecewise smooth."""
    step = np.finfo(np.float64).eps ** (1 / 3)          # the oracle's first-pass relative step
    bound = 3.0
    z = peers.bound_points(bound)(0, 3)
    near = np.array([z[0, 0], z[1, 2], z[2, 0], z[2, 2]])
    assert np.all(np.abs(np.abs(near) - bound) > 10 * step * bound)
    assert z[0, 0] < bound < z[2, 0] and z[2, 2] < -bound < z[1, 2]
    assert np.all(np.abs(z[3]) == 1.5 * bound)


def test_spline_near_its_bound_passes():
    """nflows' autoregressive rational-quadratic spline is C1 at its bound (boundary slopes 1):
    at points near and beyond the bound it passes (at x = -B exactly, central differences across
    the jump of its curvature had reported a 1.9e-5 log-det error)."""
    _need("nflows")
    cls = "MaskedPiecewiseRationalQuadraticAutoregressiveTransform"
    entry = _variant("nflows", cls, "x near")
    report = run_recipe("nflows", cls, entry, 3, "float64")
    assert report.verdict == "pass", report
