"""from_normflows: the imported refflow Flow computes exactly what the normflows model computes.

Each model is a random composition of the supported layers, built by normflows, run once on a
batch (ActNorm's data-dependent initialisation), then every parameter is moved by a random
amount (a model away from its initialisation, as after training); all in float64.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nf = pytest.importorskip("normflows")

from refflow.interop import from_normflows  # noqa: E402

#: float64 agreement of two implementations of the same closed forms: rounding only.
RTOL_LOG_PROB = 1e-10
ATOL_SAMPLE = 1e-10


def _model(seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # normflows draws its permutations and LU init from the global RNG
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 6))
    flows = []
    for i in range(int(rng.integers(2, 4))):
        kind = rng.integers(0, 5)
        if kind == 0:
            b = torch.tensor([(j + i) % 2 for j in range(dim)], dtype=torch.float64)
            depth = int(rng.integers(0, 3))
            sizes = [dim] + [int(rng.integers(3, 9)) for _ in range(depth)] + [dim]
            flows.append(nf.flows.MaskedAffineFlow(b, nf.nets.MLP(list(sizes)),
                                                   nf.nets.MLP(list(sizes))))
        elif kind == 1:
            n_a = -(-dim // 2)
            scale = bool(rng.integers(0, 2))
            n_out = 2 * (dim - n_a) if scale else dim - n_a
            flows.append(nf.flows.AffineCouplingBlock(
                nf.nets.MLP([n_a, int(rng.integers(3, 9)), n_out]), scale=scale))
        elif kind == 2:
            flows.append(nf.flows.ActNorm(dim))
        elif kind == 3:
            flows.append(nf.flows.Permute(dim, mode=["shuffle", "swap"][i % 2]))
        else:
            flows.append(nf.flows.LULinearPermute(dim, identity_init=bool(i % 2)))
        flows.append(nf.flows.Permute(dim))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), flows).double()
    model.log_prob(torch.randn(64, dim, dtype=torch.float64, generator=gen))  # ActNorm init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, dtype=p.dtype, generator=gen))
    return model, dim


@pytest.mark.parametrize("seed", range(12))
def test_log_prob_and_samples_match(seed):
    model, dim = _model(seed)
    ours = from_normflows(model)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, dim))
    with torch.no_grad():
        lp_peer = model.log_prob(torch.as_tensor(x)).numpy()
    lp_ref = ours.log_prob(x)
    rel = np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)
    assert rel.max() <= RTOL_LOG_PROB, rel.max()
    z = rng.normal(size=(50, dim))
    zt = torch.as_tensor(z)
    with torch.no_grad():
        for flow in model.flows:
            zt, _ = flow(zt)
    x_peer = zt.numpy()
    x_ref = ours.bijector.forward(z)[0]
    assert np.abs(x_ref - x_peer).max() <= ATOL_SAMPLE * max(1.0, np.abs(x_peer).max())


def _single(flow, dim=4):
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), [flow]).double()


def test_unknown_scale_map_is_refused_by_name():
    block = nf.flows.AffineCouplingBlock(nf.nets.MLP([2, 5, 4]), scale_map="sigmoid")
    block.flows[1].scale_map = "tanh"   # normflows itself raises at call time
    with pytest.raises(ValueError, match="AffineCouplingBlock.*scale_map='tanh'"):
        from_normflows(_single(block))


def test_circular_spline_wrapper_is_refused_by_name():
    flow = nf.flows.CircularCoupledRationalQuadraticSpline(4, 1, 8, ind_circ=[0])
    with pytest.raises(NotImplementedError, match="CircularCoupledRationalQuadraticSpline"):
        from_normflows(_single(flow))


def test_radial_with_zero_alpha_is_refused():
    flow = nf.flows.Radial((4,))
    with torch.no_grad():
        flow.alpha.zero_()
    with pytest.raises(ValueError, match="Radial.*alpha = 0"):
        from_normflows(_single(flow))


def test_leaky_planar_is_refused_naming_its_float32_slope():
    with pytest.raises(ValueError, match="Planar.*leaky_relu.*0.19999998807907104"):
        from_normflows(_single(nf.flows.Planar((4,), act="leaky_relu")))


def test_leaky_planar_inverse_uses_a_float32_slope():
    """The reason, measured: refflow's leaky Planar with normflows' weights and the slope its
    float64 ``inverse`` really uses matches ``log_prob`` to rounding, while its forward map
    (``LeakyReLU(0.2)``) samples with 0.2: the two directions are not one map."""
    from refflow import Flow, Planar
    from refflow.distributions import DiagNormal
    torch.manual_seed(0)
    model = _single(nf.flows.Planar((3,), act="leaky_relu"), 3)
    flow = model.flows[0]
    used = float(torch.tensor([True]) * (0.2 - 1.0) + 1.0)
    assert used == 0.19999998807907104
    base = DiagNormal(3)
    base.params["loc"], base.params["log_scale"] = np.zeros(3), np.zeros(3)
    layers = {}
    for slope in (0.2, used):
        layer = Planar(3, activation="leaky_relu", negative_slope=slope)
        for key, value in (("u", flow.u), ("w", flow.w), ("b", flow.b)):
            layer.params[key] = value.detach().numpy().reshape(-1)
        layers[slope] = Flow(base, layer)
    x = 1.5 * np.random.default_rng(0).normal(size=(40, 3))
    with torch.no_grad():
        lp_peer = model.log_prob(torch.as_tensor(x)).numpy()
        z = torch.as_tensor(x)
        x_peer = flow(z)[0].numpy()
    rel = lambda a, b: np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0))  # noqa: E731
    assert rel(layers[used].log_prob(x), lp_peer) <= RTOL_LOG_PROB
    assert rel(layers[0.2].log_prob(x), lp_peer) > 100 * RTOL_LOG_PROB
    assert rel(layers[0.2].bijector.forward(x)[0], x_peer) <= ATOL_SAMPLE
    assert rel(layers[used].bijector.forward(x)[0], x_peer) > 100 * ATOL_SAMPLE


def test_feedforward_made_is_refused():
    flow = nf.flows.MaskedAffineAutoregressive(4, 8, use_residual_blocks=False)
    with pytest.raises(ValueError, match="MaskedAffineAutoregressive.*use_residual_blocks"):
        from_normflows(_single(flow))


def test_uninitialised_actnorm_is_refused():
    with pytest.raises(ValueError, match="ActNorm.*initialisation"):
        from_normflows(_single(nf.flows.ActNorm(4)))


def test_leaky_network_is_refused():
    b = torch.tensor([1.0, 0.0, 1.0, 0.0])
    flow = nf.flows.MaskedAffineFlow(b, nf.nets.MLP([4, 5, 4], leaky=0.1),
                                     nf.nets.MLP([4, 5, 4], leaky=0.1))
    with pytest.raises(ValueError, match="leaky"):
        from_normflows(_single(flow))


def test_not_a_normflows_model():
    with pytest.raises(TypeError, match="from_normflows"):
        from_normflows(object())


#: directional derivatives of the same function by autograd and by refflow's pullbacks.
RTOL_GRAD = 1e-8


def _directional(model, ours, importer, x, seed):
    """``(autograd, refflow)`` derivatives of the mean log-prob along a random direction of the
    peer's parameters; refflow's side is ``grad . (import(theta + delta) - import(theta))``,
    exact because every parameter map of this importer is linear (copies, row selections,
    zero blocks)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model.log_prob(torch.as_tensor(x)).mean().backward()
    delta = [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]
    peer = sum(float((torch.zeros_like(p) if p.grad is None else p.grad).mul(d).sum())
               for p, d in zip(params, delta))
    _, grads = ours.nll_and_grad(x)
    before = {k: np.array(v) for k, v in ours.params.items()}
    with torch.no_grad():
        for p, d in zip(params, delta):
            p.add_(d)
    moved = importer(model).params
    with torch.no_grad():
        for p, d in zip(params, delta):
            p.sub_(d)
    mine = sum(float(np.sum(-grads[k] * (moved[k] - before[k]))) for k in grads)
    return peer, mine


@pytest.mark.parametrize("seed", range(12))
def test_gradients_match_along_random_directions(seed):
    model, dim = _model(seed)
    ours = from_normflows(model)
    x = np.random.default_rng(seed + 50).normal(size=(30, dim))
    peer, mine = _directional(model, ours, from_normflows, x, seed)
    assert abs(mine - peer) <= RTOL_GRAD * max(abs(peer), 1.0), (peer, mine)


# ----------------------------------------------------------- autoregressive and spline layers
from refflow.interop import compare  # noqa: E402

#: float64 log-probs of the same closed forms (rounding only) and their gradients (the gradient
#: of a mean over 40 points sums rounding errors of ~100 operations per point).
RTOL_LOG_PROB_COMPARE = 1e-10
RTOL_GRAD_COMPARE = 1e-8

_CONTEXT = 2


def _layer(kind, dim, rng, context):
    ctx = _CONTEXT if context else None
    hidden = int(rng.integers(4, 9))
    blocks = int(rng.integers(1, 3))
    bins = int(rng.integers(2, 6))
    if kind == "maa":
        return nf.flows.MaskedAffineAutoregressive(dim, hidden, context_features=ctx,
                                                   num_blocks=blocks)
    if kind == "arqs":
        return nf.flows.AutoregressiveRationalQuadraticSpline(
            dim, blocks, hidden, num_context_channels=ctx, num_bins=bins,
            tail_bound=float(rng.uniform(2, 4)), permute_mask=bool(rng.integers(0, 2)),
            init_identity=bool(rng.integers(0, 2)))
    return nf.flows.CoupledRationalQuadraticSpline(
        dim, blocks, hidden, num_context_channels=ctx, num_bins=bins,
        reverse_mask=bool(rng.integers(0, 2)))


def random_autoregressive_model(seed, context=False):
    """A normflows model of the autoregressive/spline layers with random options, every
    parameter moved away from its initialisation (float64)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 5))
    flows = []
    for _ in range(int(rng.integers(1, 3))):
        flows.append(_layer(["maa", "arqs", "crqs"][int(rng.integers(0, 3))], dim, rng, context))
        flows.append(nf.flows.Permute(dim))
    if context:
        model = nf.ConditionalNormalizingFlow(nf.distributions.DiagGaussian(dim), flows)
    else:
        base = (nf.distributions.GaussianMixture(int(rng.integers(1, 4)), dim)
                if rng.integers(0, 2) else nf.distributions.DiagGaussian(dim))
        model = nf.NormalizingFlow(base, flows)
    model = model.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=gen))
    return model, dim


def _check_compare(model, dim, seed, context):
    ours = from_normflows(model)
    rng = np.random.default_rng(seed + 100)
    x = 1.5 * rng.normal(size=(40, dim))
    c = rng.normal(size=(40, _CONTEXT)) if context else None
    report = compare(model, ours, x, c, rtol_log_prob=RTOL_LOG_PROB_COMPARE,
                     rtol_grad=RTOL_GRAD_COMPARE)
    # every trainable normflows parameter is compared (none left out of the gradient map)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(report.grad_rel) == names, names ^ set(report.grad_rel)
    assert report.ok, str(report)
    return report


@pytest.mark.parametrize("kind", ["maa", "arqs", "crqs"])
@pytest.mark.parametrize("context", [False, True])
def test_each_new_layer_matches(kind, context):
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    dim = 3
    flows = [_layer(kind, dim, rng, context)]
    cls = nf.ConditionalNormalizingFlow if context else nf.NormalizingFlow
    model = cls(nf.distributions.DiagGaussian(dim), flows).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
    _check_compare(model, dim, 3, context)


@pytest.mark.parametrize("seed", range(4))
def test_random_autoregressive_models_match(seed):
    context = seed % 2 == 1
    model, dim = random_autoregressive_model(seed, context)
    _check_compare(model, dim, seed, context)


def test_existing_layers_match_through_compare():
    model, dim = _model(5)
    _check_compare(model, dim, 5, False)


def test_planar_samples_log_dets_and_scores():
    torch.manual_seed(0)
    flows = [nf.flows.Planar((3,)), nf.flows.Permute(3), nf.flows.Planar((3,))]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(3), flows).double()
    ours = from_normflows(model)
    z = np.random.default_rng(0).normal(size=(30, 3))
    zt, log_det = torch.as_tensor(z), 0.0
    with torch.no_grad():
        for flow in model.flows:
            zt, ld = flow(zt)
            log_det = log_det + ld
    x_ref, log_det_ref = ours.bijector.forward(z)
    assert np.abs(x_ref - zt.numpy()).max() <= ATOL_SAMPLE * max(1.0, np.abs(x_ref).max())
    rel = np.abs(log_det_ref - log_det.numpy()) / np.maximum(np.abs(log_det.numpy()), 1.0)
    assert rel.max() <= RTOL_LOG_PROB
    # normflows cannot invert its tanh Planar: refflow scores the samples exactly
    lp = ours.log_prob(x_ref)
    base_lp = model.q0.log_prob(torch.as_tensor(z)).detach().numpy()
    assert np.abs(lp - (base_lp - log_det_ref)).max() <= RTOL_LOG_PROB * np.abs(lp).max()


# ------------------------------------------- Radial, leaky Planar, sigmoid coupling scales
def _train_briefly(model, loss, steps=5):
    """A few Adam steps of normflows' own loss (its forward or reverse KL): a model away from
    its initialisation as training leaves it."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()


def _reverse_kld(model, dim):
    """normflows' reverse KL to N(1, I) from the model's own samples (its Planar and Radial
    cannot score other points): ``mean(log q(T(z)) - log p(T(z)))``."""
    def loss():
        z, log_q = model.q0(64)
        for flow in model.flows:
            z, ld = flow(z)
            log_q = log_q - ld
        return (log_q + 0.5 * ((z - 1.0) ** 2).sum(1)).mean()
    return loss


def _sampling_path(model, ours, z):
    """The sample ``T(z)``, ``log q(T(z)) = log q0(z) - log|det dT/dz|`` and its gradient with
    respect to every layer parameter, by normflows (autograd) and by refflow (the forward pass's
    pullback with ``x_bar = 0``, ``log_det_bar = -1/n``), in normflows' names."""
    model.zero_grad()
    zt = torch.as_tensor(z)
    x, log_q = zt, model.q0.log_prob(zt)
    for flow in model.flows:
        x, ld = flow(x)
        log_q = log_q - ld
    log_q.mean().backward()
    peer = {n: p.grad.numpy().copy() for n, p in model.named_parameters()
            if n.startswith("flows.")}
    x_ref, log_det_ref, pullback = ours.bijector.forward_vjp(z)
    _, grads = pullback(np.zeros_like(z), np.full(z.shape[0], -1.0 / z.shape[0]))
    mine = {}
    for name in peer:
        key, idx = ours.peer_gradients[name]
        flat = np.asarray(grads[key[len("bijector."):]]).ravel()
        mine[name] = np.where(idx >= 0, flat[np.maximum(idx, 0)], 0.0)
    lp_ref = ours.base.log_prob(z) - log_det_ref
    return (x.detach().numpy(), log_q.detach().numpy(), peer), (x_ref, lp_ref, mine)


def _radial_model(seed, train):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 6))
    flows = []
    for _ in range(int(rng.integers(1, 4))):
        flows += [nf.flows.Radial((dim,)), nf.flows.Permute(dim)]
        if rng.integers(0, 2):
            flows.append(nf.flows.Planar((dim,)))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), flows).double()
    if train:
        _train_briefly(model, _reverse_kld(model, dim))
    return model, dim


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("train", [False, True])
def test_radial_samples_log_probs_and_gradients(seed, train):
    """normflows' Radial (alpha = |alpha_raw|) has no inverse: samples, their log-densities and
    the gradients along the sampling path, random and briefly trained."""
    model, dim = _radial_model(seed, train)
    ours = from_normflows(model)
    z = np.random.default_rng(seed + 7).normal(size=(40, dim))
    (x_peer, lp_peer, g_peer), (x_ref, lp_ref, g_ref) = _sampling_path(model, ours, z)
    assert np.abs(x_ref - x_peer).max() <= ATOL_SAMPLE * max(1.0, np.abs(x_peer).max())
    rel = np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)
    assert rel.max() <= RTOL_LOG_PROB_COMPARE, rel.max()
    assert set(g_ref) == {n for n, _ in model.named_parameters() if n.startswith("flows.")}
    for name, g in g_peer.items():
        err = np.linalg.norm(g_ref[name] - g) / max(np.linalg.norm(g), 1e-300)
        assert err <= RTOL_GRAD_COMPARE, (name, err)
    # and refflow scores the samples exactly (its inverse is closed-form)
    assert np.abs(ours.log_prob(x_ref) - lp_ref).max() <= RTOL_LOG_PROB * np.abs(lp_ref).max()


def _scored_model(seed, train):
    """The sigmoid coupling scales (with ActNorm layers), which normflows inverts: scored by
    ``model.log_prob`` anywhere."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 6))
    flows = []
    for _ in range(int(rng.integers(2, 4))):
        kind = int(rng.integers(0, 3))
        if kind == 0:
            flows.append(nf.flows.ActNorm(dim))
        else:
            n_a = -(-dim // 2)
            flows.append(nf.flows.AffineCouplingBlock(
                nf.nets.MLP([n_a, int(rng.integers(3, 9)), 2 * (dim - n_a)]),
                scale_map=["sigmoid", "sigmoid_inv"][kind - 1]))
        flows.append(nf.flows.Permute(dim))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), flows).double()
    gen = torch.Generator().manual_seed(seed)
    model.log_prob(torch.randn(64, dim, dtype=torch.float64, generator=gen))  # ActNorm init
    if train:
        x = torch.as_tensor(1.5 * rng.normal(size=(128, dim)))
        _train_briefly(model, lambda: model.forward_kld(x))
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=gen))
    return model, dim


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("train", [False, True])
def test_sigmoid_couplings_match(seed, train):
    model, dim = _scored_model(seed, train)
    _check_compare(model, dim, seed, False)


@pytest.mark.parametrize("scale_map, ours", [("sigmoid", "sigmoid-reciprocal"),
                                             ("sigmoid_inv", "sigmoid-nofloor"),
                                             ("exp", "exp")])
def test_coupling_scale_maps_are_named(scale_map, ours):
    block = nf.flows.AffineCouplingBlock(nf.nets.MLP([2, 5, 4]), scale_map=scale_map)
    layer = from_normflows(_single(block)).bijector.layers[0]
    assert f"scale={ours!r}" in repr(layer) and layer.scale_side == "sampling"

