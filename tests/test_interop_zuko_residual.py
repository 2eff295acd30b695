"""refflow.interop against zuko's residual masked networks (``residual=True``).

zuko's ``MaskedMLP(residual=True)`` (MAF, NSF, NCSF, NAF, SOSPF, BPF, conditional or not)
imports as :class:`refflow.nn.ResidualMaskedMLP`: the network's outputs equal zuko's, the masks
are zuko's, and the flows' log-probs agree to 1e-10 relative and their gradients (zuko's
autograd vs refflow's hand-derived pullbacks) to 1e-8, at random initialisation and after a
few Adam steps; sampling agrees given the same base noise.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zuko = pytest.importorskip("zuko")

import refflow  # noqa: E402
from refflow import MaskedAffineAutoregressive, MaskedSplineAutoregressive  # noqa: E402
from refflow.interop import assert_matches, from_zuko  # noqa: E402
from refflow.nn import ResidualMaskedMLP  # noqa: E402
from .helpers import assert_refused, scaled_torch_model, torch_adam_steps  # noqa: E402

#: float64 log-probs: the same closed forms on both sides, rounding only.
RTOL_LP = 1e-10
#: gradients of a mean log-prob: rounding of ~1e2 float64 operations per point.
RTOL_GRAD = 1e-8
#: the conditioner's outputs and the sampling direction (float64 passes, a few ulps of O(1)).
RTOL_VALUES = 1e-10

MODELS = {
    "maf": lambda: zuko.flows.MAF(3, transforms=2, hidden_features=[16, 16], residual=True),
    "maf_widths_randperm": lambda: zuko.flows.MAF(5, transforms=2, hidden_features=[8, 12, 12, 6],
                                                  randperm=True, residual=True),
    "maf_conditional": lambda: zuko.flows.MAF(4, 2, transforms=2, hidden_features=[16, 10],
                                              residual=True),
    "maf_passes2_conditional_tanh": lambda: zuko.flows.MAF(
        5, 3, transforms=2, passes=2, hidden_features=[9, 7], residual=True,
        activation=torch.nn.Tanh),
    "nsf": lambda: zuko.flows.NSF(3, transforms=2, bins=5, hidden_features=[16, 16],
                                  residual=True),
    "nsf_conditional_elu_widths": lambda: zuko.flows.NSF(
        4, 2, transforms=2, bins=4, hidden_features=[12, 9], residual=True,
        activation=torch.nn.ELU),
    "ncsf_conditional": lambda: zuko.flows.NCSF(3, 1, transforms=2, bins=4,
                                                hidden_features=[8, 12], residual=True),
    "naf": lambda: zuko.flows.NAF(3, transforms=2, signal=3, network={"hidden_features": [6]},
                                  hidden_features=[8, 10], residual=True),
    "sospf_conditional": lambda: zuko.flows.SOSPF(3, 2, transforms=2, degree=2, polynomials=2,
                                                  hidden_features=[8], residual=True),
    "bpf": lambda: zuko.flows.BPF(3, transforms=2, degree=5, hidden_features=[10, 6],
                                  residual=True),
}
#: the models whose zuko inverse is closed form (NAF / SOSPF / BPF invert by bisection)
SAMPLED = ["maf", "maf_widths_randperm", "maf_conditional", "maf_passes2_conditional_tanh",
           "nsf", "nsf_conditional_elu_widths", "ncsf_conditional"]


def _make(model_id, seed):
    return scaled_torch_model(MODELS[model_id], seed)


def _points(flow, model, n, seed):
    rng = np.random.default_rng(seed)
    if isinstance(flow, zuko.flows.NCSF):
        x = rng.uniform(-np.pi, np.pi, size=(n, model.dim))
    else:
        x = 1.5 * rng.standard_normal((n, model.dim))
    c = None if model.context_dim is None else rng.standard_normal((n, model.context_dim))
    return x, c


def _check(flow, model, x, c):
    report = assert_matches(flow, model, x, c, rtol_log_prob=RTOL_LP, rtol_grad=RTOL_GRAD)
    assert report.max_log_prob_rel <= RTOL_LP and report.max_grad_rel <= RTOL_GRAD
    # every zuko parameter is compared, and the gradients are not trivially zero
    assert set(report.grad_rel) == {n for n, _ in flow.named_parameters()}
    assert sum(np.linalg.norm(g) for g in report.grad_peer.values()) > 0
    return report


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_random_init_log_prob_and_gradients_agree(model_id):
    flow = _make(model_id, 0)
    model = from_zuko(flow)
    x, c = _points(flow, model, 12, 0)
    _check(flow, model, x, c)


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_briefly_trained_models_agree(model_id):
    flow = _make(model_id, 1)
    model = from_zuko(flow)
    x, c = _points(flow, model, 32, 1)
    torch_adam_steps(flow, x, c)
    _check(flow, from_zuko(flow), x[:12], None if c is None else c[:12])  # imported after


@pytest.mark.parametrize("model_id", SAMPLED)
def test_sampling_agrees_given_the_same_base_noise(model_id):
    flow = _make(model_id, 2).double()
    model = from_zuko(flow)
    rng = np.random.default_rng(7)
    z = rng.standard_normal((10, model.dim))
    if isinstance(flow, zuko.flows.NCSF):
        z = rng.uniform(-np.pi, np.pi, size=(10, model.dim))
    c = None if model.context_dim is None else rng.standard_normal((10, model.context_dim))
    with torch.no_grad():
        x_peer = flow(None if c is None else torch.as_tensor(c)).transform.inv(
            torch.as_tensor(z)).numpy()
    x_ref, _ = model.bijector.forward(z, context=c)
    assert np.max(np.abs(x_ref - x_peer) / np.maximum(np.abs(x_peer), 1.0)) <= RTOL_VALUES


@pytest.mark.parametrize("model_id", ["maf_widths_randperm", "maf_passes2_conditional_tanh",
                                      "nsf_conditional_elu_widths", "sospf_conditional"])
def test_imported_network_is_zukos(model_id):
    """Each layer's conditioner: a ResidualMaskedMLP with zuko's widths, links, masks and
    outputs (zuko's hyper-network called directly, feature-major as refflow's)."""
    flow = _make(model_id, 3).double()
    model = from_zuko(flow)
    lazies = [t for t in flow.transform.transforms
              if isinstance(t, zuko.flows.MaskedAutoregressiveTransform)]
    layers = [layer for layer in model.bijector.layers[::-1] if hasattr(layer, "made")]
    assert len(lazies) == len(layers) >= 2
    rng = np.random.default_rng(3)
    for lazy, layer in zip(lazies, layers):
        net = layer.made
        assert isinstance(net, ResidualMaskedMLP)
        modules = list(lazy.hyper)
        blocks = [m for m in modules if isinstance(m, zuko.nn.Residual)]
        assert net.hidden == tuple(int(b[0].weight.shape[0]) for b in blocks)
        n_links = sum(a != b for a, b in zip(net.hidden, net.hidden[1:]))
        assert len(modules) == 2 + len(blocks) + n_links
        assert sum(k.endswith(".w") and k.startswith("links.") for k in net.params) == n_links
        theirs = [m.mask.numpy() for m in lazy.hyper.modules()
                  if isinstance(m, zuko.nn.MaskedLinear)]
        assert len(theirs) == len(net.masks)
        for mine, mask in zip(net.masks, theirs):
            assert np.array_equal(mine.astype(bool), mask)
        x = rng.standard_normal((6, net.dim))
        c = rng.standard_normal((6, net.context_features)) if net.context_features else None
        xc = x if c is None else np.hstack([x, c])
        with torch.no_grad():
            out_peer = lazy.hyper(torch.as_tensor(xc)).numpy()
        out = net(x, c).reshape(6, -1)
        assert np.max(np.abs(out - out_peer)) <= RTOL_VALUES * max(1.0, np.abs(out_peer).max())


def test_layer_types_of_the_import():
    layers = from_zuko(_make("maf_conditional", 0)).bijector.layers
    assert all(isinstance(layer, MaskedAffineAutoregressive) for layer in layers)
    assert all(layer.scale == "softclip" and layer.scale_side == "density" for layer in layers)
    assert all(isinstance(layer.made, ResidualMaskedMLP) for layer in layers)
    assert layers[-1].made.order.tolist() == [0, 1, 2, 3]
    assert layers[-2].made.order.tolist() == [3, 2, 1, 0]
    nsf = from_zuko(_make("nsf_conditional_elu_widths", 0)).bijector.layers
    assert all(isinstance(layer, MaskedSplineAutoregressive) for layer in nsf)
    assert nsf[0].made.activation == "elu" and nsf[0].made.hidden == (12, 9)


def test_randomly_configured_models_agree():
    """Random sizes, widths (equal neighbours: no link; different: a link), orders, context,
    activations and transformers, each trained for a few Adam steps before the import."""
    rng = np.random.default_rng(11)
    for m in range(6):
        torch.manual_seed(100 + m)
        dim, context = int(rng.integers(2, 6)), int(rng.choice([0, 2]))
        widths = [int(w) for w in rng.integers(dim, 14, size=rng.integers(1, 4))]
        if m % 2 and len(widths) > 1:
            widths[1] = widths[0]                       # an equal-width pair: no link
        kw = dict(hidden_features=widths, residual=True, randperm=bool(rng.integers(0, 2)),
                  activation=[torch.nn.ReLU, torch.nn.Tanh, torch.nn.ELU][m % 3])
        kind = ["maf", "nsf", "maf", "nsf", "ncsf", "maf"][m]
        if kind == "maf":
            flow = zuko.flows.MAF(dim, context, transforms=2, **kw)
        elif kind == "nsf":
            flow = zuko.flows.NSF(dim, context, transforms=2, bins=4, **kw)
        else:
            flow = zuko.flows.NCSF(dim, context, transforms=2, bins=4, **kw)
        model = from_zuko(flow)
        x, c = _points(flow, model, 48, m)
        torch_adam_steps(flow, x, c)
        _check(flow, from_zuko(flow), x[:12], None if c is None else c[:12])


def test_imported_residual_layers_refuse_to_save(tmp_path):
    model = from_zuko(_make("maf", 0))
    with pytest.raises(ValueError, match="cannot be saved|not a refflow class"):
        refflow.save(tmp_path / "m.npz", model)
    assert not (tmp_path / "m.npz").exists()
    plain = from_zuko(zuko.flows.MAF(3, transforms=2, hidden_features=[8]))
    refflow.save(tmp_path / "plain.npz", plain)                   # plain networks still save


def _refused(flow, *words):
    assert_refused(from_zuko, flow, *words)


def test_what_is_still_not_reproducible_is_refused():
    torch.manual_seed(0)
    adjacency = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=bool)
    custom = zuko.flows.Flow(
        [zuko.flows.MaskedAutoregressiveTransform(3, adjacency=adjacency, hidden_features=[8],
                                                  residual=True)], zuko.flows.MAF(3).base)
    _refused(custom, "MaskedAutoregressiveTransform", "adjacency")
    silu = zuko.flows.MAF(3, transforms=1, hidden_features=[8], residual=True,
                          activation=torch.nn.SiLU)
    _refused(silu, "MaskedAutoregressiveTransform", "SiLU", "activation")
    # a layout zuko's MaskedMLP never builds: the last block removed, its link left in place
    flow = zuko.flows.MAF(3, transforms=1, hidden_features=[8, 12], residual=True)
    hyper = flow.transform.transforms[0].hyper
    assert [type(m).__name__ for m in hyper] == ["MaskedLinear", "Residual", "MaskedLinear",
                                                 "Residual", "MaskedLinear"]
    del hyper[3]
    _refused(flow, "MaskedAutoregressiveTransform", "'residual'", "MaskedLinear at position 2")
    # a Residual block in a coupling layer's plain MLP (zuko's MLP has no residual option)
    nvp = zuko.flows.RealNVP(3, transforms=1, hidden_features=[8])
    nvp.transform.transforms[0].hyper.insert(
        1, zuko.nn.Residual(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8)))
    _refused(nvp, "GeneralCouplingTransform", "residual")
