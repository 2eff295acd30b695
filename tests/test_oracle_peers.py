"""The README's oracle examples and the peers' defects it documents, each run as a test.

``# readme-example: NAME`` blocks of README.md are executed as they are (the convention of
``tests/test_interop_zuko.py``): the torch and JAX examples of "Checking your own flow against
refflow" and the eight reproducers of "What the oracle finds". Each reproducer asserts that the
oracle reports ``fail``; the test then confirms the defect by a second method that does not use
the oracle (autograd Jacobians, the implicit-function theorem, the peer's own other code path), so
a failure here means either the peer was fixed (update the README) or the oracle changed.
Everything skips when its peer is not installed.
"""

import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_example(tag):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# readme-example: [\w-]+\n.*?)```", text, flags=re.S)
    found = [b for b in blocks if b.startswith(f"# readme-example: {tag}\n")]
    assert len(found) == 1, f"README example {tag!r} not found"
    return found[0]


def run_example(tag):
    """Execute a README block; its namespace afterwards (``report`` and the rest)."""
    namespace = {"__name__": "readme"}
    exec(compile(readme_example(tag), f"README.md ({tag})", "exec"), namespace)
    return namespace


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: a second intra-op thread only adds spin-waits. Restored afterwards."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------- the wrapping examples
def test_readme_torch_layer(capsys):
    pytest.importorskip("torch")
    ns = run_example("torch-layer")
    assert ns["report"].verdict == "pass"
    assert set(ns["report"].reports) == {"bijector", "forward_vjp", "inverse_vjp"}
    assert "ScaleShift: pass" in capsys.readouterr().out


def test_readme_jax_layer(capsys):
    pytest.importorskip("jax")
    pytest.importorskip("distrax")
    ns = run_example("jax-layer")
    report = ns["report"]
    assert report.verdict == "pass"
    assert {"input", "p"} <= set(report.reports["forward_vjp"].errors)


def test_from_torch_sees_a_planted_autograd_bug():
    """A custom autograd Function with a wrong backward: the wrapped pullback must be caught."""
    torch = pytest.importorskip("torch")
    from refflow.testing import check_vjp, from_torch

    class WrongExp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.exp()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * x.exp() * 1.01                 # planted: 1% too large

    class Layer(torch.nn.Module):
        def __init__(self, wrong):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
            self.wrong = wrong

        def forward(self, z):
            scale = WrongExp.apply(self.a) if self.wrong else self.a.exp()
            return z * scale

    z = np.random.default_rng(0).normal(size=(4, 2))
    good = from_torch(Layer(False))
    assert check_vjp(good.vjp, z, good.params, functional=True, rng=0).verdict == "pass"
    bad = from_torch(Layer(True))
    report = check_vjp(bad.vjp, z, bad.params, functional=True, rng=0)
    assert report.line("a").verdict == "fail" and report.line("input").verdict == "pass"


def test_from_jax_refuses_float32():
    jax = pytest.importorskip("jax")
    from refflow.testing import from_jax

    if not hasattr(jax, "enable_x64"):
        pytest.skip("this JAX has no enable_x64 context manager")
    with jax.enable_x64(False):                  # whatever the process-wide setting is
        with pytest.raises(ValueError, match="jax_enable_x64"):
            from_jax(lambda p, x: x, {})


# ------------------------------------------------------------------- the eight defects
def test_defect_1_zuko_naf_inverse_gradient():
    torch = pytest.importorskip("torch")
    pytest.importorskip("zuko")
    ns = run_example("defect-1")
    flow, y = ns["flow"], torch.as_tensor(ns["y"])
    # second method: the implicit-function theorem on the forward map (autograd there only)
    theta = flow.transform.transforms[0].univariate.network[2].bias
    c = torch.as_tensor(np.random.default_rng(1).normal(size=tuple(y.shape)))
    x = flow.transform().inv(y)
    through_inverse = torch.autograd.grad((c * x).sum(), theta)[0]
    xd = x.detach().requires_grad_()
    fx = flow.transform()(xd)
    jac = torch.stack([torch.autograd.functional.jacobian(
        lambda v: flow.transform()(v[None])[0], xi) for xi in xd.detach()])
    w = torch.linalg.solve(jac.transpose(1, 2), c)                       # J^T w = c
    implicit = torch.autograd.grad(fx, theta, grad_outputs=-w)[0]
    rel = float((through_inverse - implicit).norm() / implicit.norm())
    assert rel > 0.1, (through_inverse, implicit)


def test_defect_2_normflows_spline_list_tails():
    torch = pytest.importorskip("torch")
    pytest.importorskip("normflows")
    ns = run_example("defect-2")
    spline, w, h, d = ns["spline"], ns["w"], ns["h"], ns["d"]
    x = torch.tensor([[5.0, 0.5]], dtype=torch.float64)
    as_list, _ = spline(x, w[None], h[None], d[None], tails=["linear", "linear"], tail_bound=3.0)
    as_str, _ = spline(x, w[None], h[None], d[None, :, 1:-1], tails="linear", tail_bound=3.0)
    assert as_str[0, 0].item() == 5.0                 # identity tail
    assert as_list[0, 0].item() == 0.0                # the same tail given as a list


def test_defect_3_normflows_planar_float32_log_det():
    torch = pytest.importorskip("torch")
    pytest.importorskip("normflows")
    ns = run_example("defect-3")
    flow = ns["flow"]
    z = torch.as_tensor(np.random.default_rng(2).normal(size=(4, 3)))
    x, log_det = flow(z)
    assert x.dtype == torch.float64 and log_det.dtype == torch.float32
    # the same formula in float64, written out: log|1 + w.u_hat h'(w.z + b)|
    with torch.no_grad():
        inner = (flow.w * flow.u).sum()
        u_hat = flow.u + (torch.nn.functional.softplus(inner) - 1 - inner) * flow.w / (flow.w ** 2).sum()
        lin = (flow.w * z).sum(dim=1) + flow.b
        slope = torch.where(lin < 0, torch.tensor(0.2, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        exact = torch.log(torch.abs(1 + (flow.w * u_hat).sum() * slope))
    assert (log_det.double() - exact).abs().max().item() > 1e-10


def test_defect_4_normflows_planar_overflow():
    torch = pytest.importorskip("torch")
    pytest.importorskip("normflows")
    ns = run_example("defect-4")
    flow = ns["flow"]
    with torch.no_grad():
        x, _ = flow(torch.zeros(1, 2, dtype=torch.float64))
        inner = (flow.w * flow.u).sum()
        u_hat = flow.u + (torch.nn.functional.softplus(inner) - 1 - inner) * flow.w / (flow.w ** 2).sum()
    assert torch.isnan(x).all()
    assert torch.isfinite(u_hat).all() and (flow.w * u_hat).sum().item() > -1   # well defined


def test_defect_5_pyro_affine_autoregressive_float64_inverse():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    ns = run_example("defect-5")
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    torch.manual_seed(0)
    flow32 = AffineAutoregressive(AutoRegressiveNN(3, [8]))         # float32: inverts fine
    x = torch.randn(4, 3)
    assert (flow32.inv(flow32(x)) - x).abs().max().item() < 1e-5
    flow = ns["flow"]
    y = flow(x.double()).detach().clone()        # a new tensor: Pyro's cache cannot answer
    with pytest.raises(RuntimeError, match="dtype"):
        flow.inv(y)


def test_defect_6_pyro_sylvester_log_det():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    ns = run_example("defect-6")
    from refflow.testing import jacobian_fd

    flow = ns["flow"]
    z = np.random.default_rng(0).normal(size=(4, 3))
    zt = torch.as_tensor(z)
    with torch.no_grad():
        log_det = flow.log_abs_det_jacobian(zt, flow(zt)).numpy()
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: flow(v[None])[0], zi)
                       for zi in zt])
    autograd_slogdet = torch.linalg.slogdet(jac)[1].detach().numpy()
    fd = jacobian_fd(lambda v: flow(torch.as_tensor(v)).detach().numpy(), z)
    np.testing.assert_allclose(autograd_slogdet, np.linalg.slogdet(fd)[1], rtol=0, atol=1e-8)
    assert np.abs(log_det - autograd_slogdet).max() > 1e-3


def test_defect_7_pyro_spline_boundary_slope():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    ns = run_example("defect-7")
    flow = ns["flow"]
    with torch.no_grad():
        inside, outside = (torch.tensor([[3.0 + s, 0.4]], dtype=torch.float64) for s in (-1e-9, 1e-9))
        ld_in = flow.log_abs_det_jacobian(inside, flow(inside))[0, 0].item()
        ld_out = flow.log_abs_det_jacobian(outside, flow(outside))[0, 0].item()
    assert ld_out == 0.0
    assert ld_in == pytest.approx(np.log(0.999), abs=1e-6)            # slope 0.999 at the bound


def test_defect_8_zuko_bernstein_jump():
    pytest.importorskip("torch")
    pytest.importorskip("zuko")
    ns = run_example("defect-8")
    forward, x_switch = ns["forward"], ns["x_switch"]
    below = forward(np.array([[x_switch - 1e-9, 0.0]]))[0][0, 0]
    above = forward(np.array([[x_switch + 1e-9, 0.0]]))[0][0, 0]
    # the map's slope is ~1 there, so a continuous map would move by ~2e-9
    assert abs(above - below) > 5e-6
