"""refflow as an oracle for nflows models: ``refflow.interop.nflows.from_nflows``.

Random-init and briefly trained nflows flows (float64) are imported; log-probs must agree to
1e-10 and every parameter's gradient of the mean NLL (torch autograd vs refflow's hand-derived
pullbacks, matched through ``peer_parameters``) to 1e-8 relative. Skipped without torch/nflows.
"""

import subprocess
import zlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nflows")

from nflows.distributions.normal import ConditionalDiagonalNormal, StandardNormal  # noqa: E402
from nflows.flows.base import Flow  # noqa: E402
from nflows.nn.nets import MLP, ResidualNet  # noqa: E402
from nflows.transforms import (  # noqa: E402
    ActNorm, AffineCouplingTransform, CompositeTransform, LULinear,
    MaskedAffineAutoregressiveTransform, MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    PiecewiseRationalQuadraticCouplingTransform, RandomPermutation, ReversePermutation,
)

from refflow.interop.nflows import from_nflows  # noqa: E402

RTOL_LOG_PROB = 1e-10   # float64, same formulas: only summation order differs
RTOL_GRAD = 1e-8        # normwise per parameter, assert_matches' default
D, C = 3, 2


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _maf(cf, residual, random_mask=False):
    return Flow(CompositeTransform([
        MaskedAffineAutoregressiveTransform(D, 8, context_features=cf, num_blocks=2,
                                            use_residual_blocks=residual,
                                            random_mask=random_mask),
        RandomPermutation(D),
        MaskedAffineAutoregressiveTransform(D, 6, context_features=cf, num_blocks=1,
                                            use_residual_blocks=residual),
        ReversePermutation(D),
    ]), StandardNormal([D]))


def _nsf_ar(cf, residual):
    return Flow(CompositeTransform([
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            D, 8, context_features=cf, num_bins=4, tails="linear", tail_bound=2.0,
            use_residual_blocks=residual),
        LULinear(D, identity_init=False),
        ReversePermutation(D),
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            D, 8, context_features=cf, num_bins=5, tails="linear", tail_bound=2.5,
            use_residual_blocks=residual),
    ]), StandardNormal([D]))


def _nsf_coupling(cf):
    net = lambda i, o: ResidualNet(i, o, 8, context_features=cf, num_blocks=2)  # noqa: E731
    return Flow(CompositeTransform([
        PiecewiseRationalQuadraticCouplingTransform([0, 1, 1], net, num_bins=4, tails="linear",
                                                    tail_bound=2.0),
        LULinear(D, identity_init=False),
        PiecewiseRationalQuadraticCouplingTransform([1, 0, 0], net, num_bins=3, tails="linear",
                                                    tail_bound=2.0),
    ]), StandardNormal([D]))


def _affine_coupling(cf):
    net = lambda i, o: ResidualNet(i, o, 8, context_features=cf, num_blocks=1)  # noqa: E731
    return Flow(CompositeTransform([
        AffineCouplingTransform([0, 1, 1], net), RandomPermutation(D),
        AffineCouplingTransform([1, 0, 1], net), LULinear(D),
    ]), StandardNormal([D]))


BUILDERS = {
    "maf": lambda cf: _maf(cf, False),
    "maf-random-mask": lambda cf: _maf(cf, False, random_mask=True),
    "maf-resmade": lambda cf: _maf(None, True),
    "nsf-ar": lambda cf: _nsf_ar(cf, False),
    "nsf-ar-resmade": lambda cf: _nsf_ar(None, True),
    "nsf-coupling": _nsf_coupling,
    "affine-coupling": _affine_coupling,
}
CASES = [(name, cond) for name in BUILDERS for cond in (False, True)
         if not (cond and "resmade" in name)]


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(n, D, generator=g)
    return x, torch.randn(n, C, generator=g)


def _train(flow, cond, steps=8):
    """A few Adam steps, so the weights leave their initialisation (identity-ish blocks)."""
    opt = torch.optim.Adam(flow.parameters(), lr=3e-2)
    for step in range(steps):
        x, c = _data(32, 100 + step)
        opt.zero_grad()
        (-flow.log_prob(x, context=c if cond else None).mean()).backward()
        opt.step()


def _compare(flow, cond, seed=1):
    """Worst log-prob and per-parameter gradient errors (relative), nflows vs refflow."""
    x, c = _data(50, seed)
    c = c if cond else None
    model = from_nflows(flow)
    lp = flow.log_prob(x, context=c)
    flow.zero_grad()
    (-lp.mean()).backward()
    cn = None if c is None else c.numpy()
    ours = model.log_prob(x.numpy(), cn)
    theirs = lp.detach().numpy()
    lp_err = float(np.max(np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))))
    nll, grads = model.nll_and_grad(x.numpy(), cn)
    assert abs(nll + theirs.mean()) <= RTOL_LOG_PROB * max(1.0, abs(nll))
    torch_params = dict(flow.named_parameters())
    mapped = {name for name, _ in model.peer_parameters.values()}
    assert mapped == set(torch_params), "every nflows parameter has exactly one refflow twin"
    assert set(model.peer_parameters) == set(model.params)
    worst = 0.0
    for key, (name, rows) in model.peer_parameters.items():
        g = torch_params[name].grad.numpy()
        g = g if rows is None else g[rows]
        assert grads[key].shape == g.shape, key
        worst = max(worst, float(np.max(np.abs(grads[key] - g)) / max(np.max(np.abs(g)), 1e-30)))
    return lp_err, worst, model


@pytest.mark.parametrize("trained", [False, True], ids=["init", "trained"])
@pytest.mark.parametrize("name,cond", CASES)
def test_log_prob_and_gradients_match(name, cond, trained):
    torch.manual_seed(zlib.crc32(f"{name}-{cond}-{trained}".encode()))  # stable across runs
    flow = BUILDERS[name](C if cond else None)
    if trained:
        _train(flow, cond)
    lp_err, grad_err, model = _compare(flow, cond)
    assert lp_err <= RTOL_LOG_PROB, lp_err
    assert grad_err <= RTOL_GRAD, grad_err
    assert model.context_dim == (C if cond else None)


def test_sampling_direction_matches_nflows_inverse():
    """refflow's forward (sampling) is nflows' transform inverse, sequential passes included."""
    torch.manual_seed(3)
    flow = _nsf_ar(C, False)
    _train(flow, True, steps=5)
    model = from_nflows(flow)
    z, c = _data(20, 7)
    x_nf, _ = flow._transform.inverse(z, context=c)
    x_ours, _ = model.bijector.forward(z.numpy(), c.numpy())
    x_nf = x_nf.detach().numpy()
    assert np.max(np.abs(x_ours - x_nf) / np.maximum(1.0, np.abs(x_nf))) <= RTOL_LOG_PROB


def test_spline_scaling_by_sqrt_hidden_features_is_applied_and_needed():
    """nflows divides coupling widths/heights by sqrt(hidden_features) (ResidualNet has that
    attribute); without the division the import would be wrong by O(1)."""
    torch.manual_seed(5)
    flow = _nsf_coupling(None)
    _train(flow, False, steps=5)
    model = from_nflows(flow)
    layer = model.bijector.layers[-1]               # nflows' first transform
    divisor = layer.conditioner._divisor
    assert np.allclose(np.unique(divisor), [1.0, np.sqrt(8)])
    x, _ = _data(30, 2)
    good = model.log_prob(x.numpy())
    layer.conditioner._divisor = np.ones_like(divisor)
    bad = model.log_prob(x.numpy())
    assert np.max(np.abs(good - bad)) > 1e-3


def test_made_masks_are_nflows_masks():
    torch.manual_seed(6)
    flow = _maf(C, False, random_mask=True)
    model = from_nflows(flow)
    nf_made = flow._transform._transforms[0].autoregressive_net
    ours = model.bijector.layers[-1].made
    theirs = [nf_made.initial_layer.mask] + [b.linear.mask for b in nf_made.blocks] + \
        [nf_made.final_layer.mask]
    assert len(ours.masks) == len(theirs)
    for m_ours, m_theirs in zip(ours.masks, theirs):
        assert np.array_equal(m_ours, m_theirs.numpy())


def _single(transform, base=None):
    return Flow(transform, base or StandardNormal([D]))


@pytest.mark.parametrize("make,match", [
    (lambda: _single(ActNorm(D)), "unsupported nflows layer .*ActNorm"),
    (lambda: _single(LULinear(D, eps=1e-2)), "LULinear: eps=0.01"),
    (lambda: _single(MaskedAffineAutoregressiveTransform(D, 8, use_batch_norm=True,
                                                         use_residual_blocks=False)),
     "batch norm"),
    (lambda: _single(MaskedAffineAutoregressiveTransform(D, 8, context_features=C)),
     "conditional residual MADE"),
    (lambda: _single(MaskedAffineAutoregressiveTransform(D, 8, use_residual_blocks=False,
                                                         dropout_probability=0.1)),
     "dropout"),
    (lambda: _single(MaskedAffineAutoregressiveTransform(D, 8, use_residual_blocks=False,
                                                         activation=torch.sigmoid)),
     "activation 'sigmoid'"),
    (lambda: _single(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        D, 8, num_bins=4, tails=None, use_residual_blocks=False)), "tails=None"),
    (lambda: _single(PiecewiseRationalQuadraticCouplingTransform(
        [0, 1, 1], lambda i, o: MLP([i], [o], [8]), tails="linear")), "MLP"),
    (lambda: _single(PiecewiseRationalQuadraticCouplingTransform(
        [0, 1, 1], lambda i, o: ResidualNet(i, o, 8), tails="linear",
        apply_unconditional_transform=True)), "apply_unconditional_transform"),
    (lambda: _single(ReversePermutation(D), ConditionalDiagonalNormal([D], context_encoder=
                                                                     torch.nn.Linear(C, 2 * D))),
     "base distribution ConditionalDiagonalNormal"),
])
def test_unsupported_layers_raise_naming_class_and_option(make, match):
    with pytest.raises(ValueError, match=match):
        from_nflows(make())


def test_not_a_flow_and_embedding_net_raise():
    with pytest.raises(ValueError, match="expected an nflows"):
        from_nflows(ReversePermutation(D))
    flow = Flow(ReversePermutation(D), StandardNormal([D]), embedding_net=torch.nn.Linear(C, C))
    with pytest.raises(ValueError, match="embedding_net Linear"):
        from_nflows(flow)


def test_imported_models_with_private_networks_refuse_to_save(tmp_path):
    import refflow
    model = from_nflows(_nsf_coupling(None))
    with pytest.raises(ValueError, match="cannot be saved|not a refflow class"):
        refflow.save(tmp_path / "m.npz", model)


def test_core_package_does_not_import_torch():
    code = ("import sys, refflow, refflow.interop.nflows; "
            "assert 'torch' not in sys.modules and 'nflows' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib")
                   .Path(__file__).resolve().parents[1]))
