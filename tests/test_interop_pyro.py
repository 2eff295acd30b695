"""from_pyro: the imported refflow Flow computes exactly what the Pyro flow computes.

Each model is a random composition of the supported transforms over a diagonal normal base,
with every parameter moved by a random amount (a model away from its initialisation), in
float64. Pyro's Planar and Radial invert only from their cache, so the log-probs are compared
at Pyro's own samples ``x = T(z)``; the samples themselves are compared from the same noise.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pyro.distributions")

import pyro.distributions.transforms as T  # noqa: E402

from refflow.interop import from_pyro  # noqa: E402

#: float64 agreement of two implementations of the same closed forms: rounding only.
RTOL_LOG_PROB = 1e-10
ATOL_SAMPLE = 1e-10


def _model(seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(1, 6))
    transforms = []
    for _ in range(int(rng.integers(2, 6))):
        kind = rng.integers(0, 4)
        if kind == 0:
            transforms.append(T.Planar(dim))
        elif kind == 1:
            transforms.append(T.Radial(dim))
        elif kind == 2:
            transforms.append(T.Householder(dim, count_transforms=int(rng.integers(1, 3))))
        else:
            transforms.append(T.Permute(torch.randperm(dim)))
    for t in transforms:
        if isinstance(t, torch.nn.Module):
            t.double()
            with torch.no_grad():
                for p in t.parameters():
                    p.add_(0.5 * torch.randn_like(p))
    loc = torch.as_tensor(rng.normal(size=dim))
    scale = torch.as_tensor(np.exp(0.3 * rng.normal(size=dim)))
    return pd.TransformedDistribution(pd.Normal(loc, scale).to_event(1), transforms), dim


@pytest.mark.parametrize("seed", range(12))
def test_log_prob_and_samples_match(seed):
    dist, dim = _model(seed)
    model = from_pyro(dist)
    z = torch.as_tensor(np.random.default_rng(seed).normal(size=(40, dim)))
    x = z
    for t in dist.transforms:
        x = t(x)  # Pyro caches (z, x) per transform: its log_prob at x is then defined
    lp_peer = dist.log_prob(x).detach().numpy()
    x_peer = x.detach().numpy()
    x_ref = model.bijector.forward(z.numpy())[0]
    assert np.abs(x_ref - x_peer).max() <= ATOL_SAMPLE * max(1.0, np.abs(x_peer).max())
    lp_ref = model.log_prob(x_peer)
    rel = np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)
    assert rel.max() <= RTOL_LOG_PROB, rel.max()
    # the transforms list with a separate base gives the same model
    again = from_pyro(list(dist.transforms), dist.base_dist)
    assert np.array_equal(again.log_prob(x_peer), lp_ref)


@pytest.mark.parametrize("make, name, why", [
    (lambda: T.BlockAutoregressive(3), "BlockAutoregressive", "1e-8"),
    (lambda: T.Sylvester(3, 2), "Sylvester", "not a density of its map"),
    (lambda: T.neural_autoregressive(3, hidden_dims=[8]), "NeuralAutoregressive",
     r"log\(A \+ 1e-8\)"),
    (lambda: T.polynomial(3, hidden_dims=[8]), "Polynomial", r"log\(p'\(x\) \+ 1e-8\)"),
])
def test_unsupported_transforms_are_refused_by_name(make, name, why):
    base = pd.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    with pytest.raises(NotImplementedError, match=f"{name}.*{why}"):
        from_pyro(pd.TransformedDistribution(base, [make()]))


@pytest.mark.parametrize("make, name", [
    (lambda: T.conditional_planar(3, 2), "ConditionalPlanar"),
    (lambda: T.conditional_radial(3, 2), "ConditionalRadial"),
    (lambda: T.conditional_householder(3, 2), "ConditionalHouseholder"),
    (lambda: T.conditional_matrix_exponential(3, 2), "ConditionalMatrixExponential"),
    (lambda: T.conditional_spline(3, 2), "ConditionalSpline"),
    (lambda: T.conditional_neural_autoregressive(3, 2, hidden_dims=[8]),
     "ConditionalNeuralAutoregressive"),
])
def test_uncovered_conditional_transforms_are_refused_by_name(make, name):
    base = pd.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    with pytest.raises(NotImplementedError, match=f"{name} is not supported"):
        from_pyro(pd.ConditionalTransformedDistribution(base, [make()]))


#: the importers' log-prob tolerance: a peer log-det off its map's by more cannot be imported
RTOL_IMPORT = 1e-10


@pytest.mark.parametrize("make, gap", [
    (lambda: T.Sylvester(3, count_transforms=2), 1e-3),   # Q ignored: an O(1) error
    (lambda: T.neural_autoregressive(3, hidden_dims=[8]), RTOL_IMPORT),   # log(A + 1e-8)
    (lambda: T.polynomial(3, hidden_dims=[8]), RTOL_IMPORT),    # log(p' + 1e-8)
], ids=["Sylvester", "NeuralAutoregressive", "Polynomial"])
def test_refused_log_dets_are_not_their_maps(make, gap):
    """The reason these transforms are refused, measured: Pyro's log-det against ``slogdet`` of
    the autograd Jacobian of its own ``_call`` (float64) differs by more than ``gap``, beyond
    what an importer may differ from its peer."""
    with _float64():
        torch.manual_seed(0)
        t = make()
        with torch.no_grad():
            for p in t.parameters():
                p.copy_(torch.randn(p.shape))
        x = torch.randn(5, 3)
        pyro_log_det = t.log_abs_det_jacobian(x, t(x))
        jac = torch.stack([torch.autograd.functional.jacobian(
            lambda r: t._call(r[None])[0], row) for row in x])
    true = torch.linalg.slogdet(jac)[1]
    assert (pyro_log_det - true).abs().max() > gap * max(1.0, float(true.abs().max()))


def test_bad_arguments():
    with pytest.raises(TypeError, match="from_pyro"):
        from_pyro(object())
    with pytest.raises(NotImplementedError, match="base distribution"):
        from_pyro([T.Permute(torch.arange(2))], pd.Laplace(torch.zeros(2), 1).to_event(1))


#: directional derivatives of the same function by autograd and by refflow's pullbacks.
RTOL_GRAD = 1e-8


@pytest.mark.parametrize("seed", range(12))
def test_gradients_match_along_random_directions(seed):
    """The derivative of ``mean log q(T(z))`` at fixed base draws ``z`` (Pyro's sampling path,
    the only one its Planar and Radial differentiate), along a random direction ``delta`` of the
    transforms' parameters: torch's autograd against refflow's pullback of the forward log-det
    (``log q(T(z)) = log p(z) - log|det dT/dz|``), dotted with ``import(theta + delta) -
    import(theta)``, exact since the parameter map is a copy."""
    dist, dim = _model(seed)
    model = from_pyro(dist)
    params = [p for t in dist.transforms if isinstance(t, torch.nn.Module)
              for p in t.parameters()]
    if not params:
        pytest.skip("only permutations: no parameters")
    gen = torch.Generator().manual_seed(seed)
    delta = [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]
    z = np.random.default_rng(seed + 50).normal(size=(30, dim))
    x = torch.as_tensor(z)
    for t in dist.transforms:
        x = t(x)
    grads = torch.autograd.grad(dist.log_prob(x).mean(), params, allow_unused=True)
    peer = sum(0.0 if g is None else float((g * d).sum()) for g, d in zip(grads, delta))
    _, _, pullback = model.bijector.forward_vjp(z)
    _, ref_grads = pullback(np.zeros_like(z), np.full(z.shape[0], -1.0 / z.shape[0]))
    before = {k: np.array(v) for k, v in model.bijector.params.items()}
    with torch.no_grad():
        for p, d in zip(params, delta):
            p.add_(d)
    moved = from_pyro(dist).bijector.params
    with torch.no_grad():
        for p, d in zip(params, delta):
            p.sub_(d)
    mine = sum(float(np.sum(ref_grads[k] * (moved[k] - before[k]))) for k in ref_grads)
    assert abs(mine - peer) <= RTOL_GRAD * max(abs(peer), 1.0), (peer, mine)


# ------------------------------------------------- affine and spline layers, through compare
from pyro.nn import AutoRegressiveNN, DenseNN  # noqa: E402

from refflow.interop import compare  # noqa: E402

#: float64 log-probs of the same closed forms (rounding only), and gradients of a mean over 40
#: points (rounding of ~100 operations per point summed).
RTOL_LOG_PROB_COMPARE = 1e-10
RTOL_GRAD_COMPARE = 1e-8
_CONTEXT = 2


def _transform(kind, dim, rng, context):
    hidden = [int(rng.integers(dim + 1, dim + 6)) for _ in range(int(rng.integers(1, 3)))]
    bins = int(rng.integers(2, 6))
    order = ["linear", "quadratic"][int(rng.integers(0, 2))]
    sizes = [bins, bins, bins - 1] + ([bins] if order == "linear" else [])
    act = [torch.nn.ReLU(), torch.nn.Tanh()][int(rng.integers(0, 2))]
    if kind == "iaf":
        stable = bool(rng.integers(0, 2))
        if context:
            return T.conditional_affine_autoregressive(dim, _CONTEXT, hidden_dims=hidden,
                                                       stable=stable)
        return T.AffineAutoregressive(AutoRegressiveNN(dim, hidden, nonlinearity=act),
                                      stable=stable)
    if kind == "coupling":
        split = int(rng.integers(1, dim))
        if context:
            return T.conditional_affine_coupling(dim, _CONTEXT, hidden_dims=hidden,
                                                 split_dim=split)
        return T.AffineCoupling(split, DenseNN(split, hidden, [dim - split, dim - split],
                                               nonlinearity=act))
    if kind == "spline":
        return T.Spline(dim, count_bins=bins, bound=float(rng.uniform(2, 4)), order=order)
    if kind == "spline_coupling":
        split = int(rng.integers(1, dim))
        net = DenseNN(split, hidden, [(dim - split) * k for k in sizes], nonlinearity=act)
        return T.SplineCoupling(dim, split, net, count_bins=bins, order=order,
                                identity=bool(rng.integers(0, 2)))
    # spline_ar
    if context:
        return T.conditional_spline_autoregressive(dim, _CONTEXT, hidden_dims=hidden,
                                                   count_bins=bins)
    return T.SplineAutoregressive(dim, AutoRegressiveNN(dim, hidden, param_dims=sizes,
                                                        nonlinearity=act),
                                  count_bins=bins, order=order)


_KINDS = ["iaf", "coupling", "spline", "spline_coupling", "spline_ar"]
_CONDITIONAL_KINDS = ["iaf", "coupling", "spline_ar"]


def random_flow(seed, context=False, kinds=None):
    """A Pyro flow of the affine/spline layers with random options and every parameter moved
    away from its initialisation (float64 throughout)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 5))
    pool = kinds or (_CONDITIONAL_KINDS if context else _KINDS)
    with _float64():
        transforms = []
        for _ in range(int(rng.integers(1, 3))):
            transforms.append(_transform(pool[int(rng.integers(0, len(pool)))], dim, rng,
                                         context))
            transforms.append(T.Permute(torch.randperm(dim)))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for t in transforms:
                if isinstance(t, torch.nn.Module):
                    for p in t.parameters():
                        p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=gen))
        base = pd.Normal(torch.as_tensor(rng.normal(size=dim)),
                         torch.as_tensor(np.exp(0.2 * rng.normal(size=dim)))).to_event(1)
        cls = pd.ConditionalTransformedDistribution if context else pd.TransformedDistribution
        return cls(base, transforms), dim


class _float64:
    """Pyro builds its masks and parameters in torch's default dtype: float64 while inside."""

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def _unwrapped(dist):
    """The transforms, a conditional flow's wrapped plain ones (``ConstantConditionalTransform``)
    unwrapped."""
    return [t.transform if type(t).__name__ == "ConstantConditionalTransform" else t
            for t in dist.transforms]


def _check_compare(dist, dim, seed, context, **kwargs):
    ours = from_pyro(dist, **kwargs)
    rng = np.random.default_rng(seed + 100)
    x = 1.5 * rng.normal(size=(40, dim))
    c = rng.normal(size=(40, _CONTEXT)) if context else None
    report = compare(dist, ours, x, c, rtol_log_prob=RTOL_LOG_PROB_COMPARE,
                     rtol_grad=RTOL_GRAD_COMPARE)
    names = {f"{i}.{n}" for i, t in enumerate(_unwrapped(dist))
             if isinstance(t, torch.nn.Module) for n, _ in t.named_parameters()}
    assert set(report.grad_rel) == names, names ^ set(report.grad_rel)
    assert report.ok, str(report)
    return report


@pytest.mark.parametrize("kind", _KINDS)
def test_each_new_transform_matches(kind):
    dist, dim = random_flow(11, kinds=[kind])
    _check_compare(dist, dim, 11, False)


@pytest.mark.parametrize("kind", _CONDITIONAL_KINDS)
def test_each_conditional_transform_matches(kind):
    dist, dim = random_flow(12, context=True, kinds=[kind])
    _check_compare(dist, dim, 12, True)


@pytest.mark.parametrize("seed", range(3))
def test_random_flows_match(seed):
    dist, dim = random_flow(seed, context=seed == 2)
    _check_compare(dist, dim, seed, seed == 2)


def test_clamped_log_scales_take_the_straight_through_gradient_on_request():
    """Log-scales pushed outside [-5, 3]: values agree either way; Pyro's autograd gradient is
    the straight-through one, which ``straight_through=True`` reproduces and the default (the
    clip's true derivative, 0 there) does not."""
    with _float64():
        torch.manual_seed(0)
        t = T.AffineAutoregressive(AutoRegressiveNN(3, [6]))
        with torch.no_grad():
            t.arn.layers[-1].bias[3:].fill_(6.0)   # log_scale rows: clamped at 3 everywhere
        dist = pd.TransformedDistribution(pd.Normal(torch.zeros(3), torch.ones(3)).to_event(1),
                                          [t])
    _check_compare(dist, 3, 0, False, straight_through=True)
    report = compare(dist, from_pyro(dist), 1.5 * np.random.default_rng(1).normal(size=(40, 3)))
    assert report.max_log_prob_rel <= RTOL_LOG_PROB_COMPARE
    assert report.grad_rel["0.arn.layers.1.bias"] > 1e-3  # the true derivative differs


def test_unsupported_options_are_refused_by_name():
    with _float64():
        t = T.AffineAutoregressive(AutoRegressiveNN(3, [6]), log_scale_min_clip=-4.0)
        base = pd.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
        with pytest.raises(ValueError, match="AffineAutoregressive.*log_scale_min_clip"):
            from_pyro(pd.TransformedDistribution(base, [t]))
        t = T.AffineAutoregressive(AutoRegressiveNN(3, [6], skip_connections=True))
        with pytest.raises(ValueError, match="skip_connections"):
            from_pyro(pd.TransformedDistribution(base, [t]))


@pytest.mark.parametrize("kind", ["uniform", "studentt"])
def test_uniform_and_student_bases(kind):
    with _float64():
        torch.manual_seed(1)
        if kind == "uniform":
            base = pd.Uniform(torch.tensor([-3.0, -2.0, -4.0]),
                              torch.tensor([3.0, 2.5, 4.0])).to_event(1)
        else:
            base = pd.StudentT(torch.tensor([2.0, 5.0, 9.0]), torch.tensor([0.1, -0.2, 0.3]),
                               torch.tensor([1.0, 0.5, 2.0])).to_event(1)
        dist = pd.TransformedDistribution(base, [T.Spline(3, count_bins=4)])
    # points whose preimages lie inside the uniform box (the spline maps [-3, 3] onto itself)
    x = np.random.default_rng(2).uniform(-1.5, 1.5, size=(40, 3))
    report = compare(dist, from_pyro(dist), x, rtol_log_prob=RTOL_LOG_PROB_COMPARE,
                     rtol_grad=RTOL_GRAD_COMPARE)
    assert np.isfinite(report.log_prob_peer).all()
    assert report.ok, str(report)


def test_imported_model_saves_and_loads(tmp_path):
    """The imported MADEs (Pyro's order and degrees written out) and MLPs are refflow's own:
    the model file rebuilds the same function."""
    import refflow
    dist, dim = random_flow(21, kinds=["iaf", "spline_coupling", "spline_ar"])
    model = from_pyro(dist)
    refflow.save(tmp_path / "m.npz", model)
    x = np.random.default_rng(0).normal(size=(7, dim))
    assert np.array_equal(refflow.load(tmp_path / "m.npz").log_prob(x), model.log_prob(x))


# ------------------------------------------------------------------------ BatchNorm (eval)
def _train_briefly(dist, x, context=None, steps=5):
    """A few Adam steps of Pyro's maximum likelihood (``-log_prob(x).mean()``), as Pyro's flow
    tutorial trains: BatchNorm in training mode updates its running statistics meanwhile."""
    params = [p for t in _unwrapped(dist) if isinstance(t, torch.nn.Module)
              for p in t.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        d = dist if context is None else dist.condition(context)
        (-d.log_prob(x.clone()).mean()).backward()   # a new tensor: Pyro caches by identity
        opt.step()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("train", [False, True])
def test_batchnorm_in_eval_mode_matches(seed, train):
    context = seed == 3
    with _float64():
        dist, dim = random_flow(30 + seed, context=context,
                                kinds=["iaf", "coupling", "spline_ar"] if context else None)
        rng = np.random.default_rng(seed)
        transforms = list(dist.transforms)
        for i in sorted(rng.choice(len(transforms) + 1, size=2, replace=False))[::-1]:
            bn = T.BatchNorm(dim, momentum=float(rng.uniform(0.05, 0.5)),
                             epsilon=float(10.0 ** rng.uniform(-6, -3)))
            with torch.no_grad():
                bn.gamma.copy_(torch.as_tensor(rng.uniform(0.5, 2.0, size=dim)))
                bn.beta.copy_(torch.as_tensor(rng.normal(size=dim)))
                bn.moving_mean.copy_(torch.as_tensor(rng.normal(size=dim)))
                bn.moving_variance.copy_(torch.as_tensor(rng.uniform(0.3, 3.0, size=dim)))
            transforms.insert(int(i), bn)
        cls = pd.ConditionalTransformedDistribution if context else pd.TransformedDistribution
        dist = cls(dist.base_dist, transforms)
        if train:
            x = torch.as_tensor(1.5 * rng.normal(size=(128, dim)))
            c = torch.as_tensor(rng.normal(size=(128, _CONTEXT))) if context else None
            _train_briefly(dist, x, c)
        for t in transforms:
            if isinstance(t, T.BatchNorm):
                t.eval()
    _check_compare(dist, dim, seed, context)


def test_batchnorm_negative_gamma_takes_the_floor():
    """Pyro's ``relu(gamma) + 1e-6``: a non-positive gamma gives the scale 1e-6 and a zero
    gradient, reproduced exactly."""
    with _float64():
        bn = T.BatchNorm(3)
        with torch.no_grad():
            bn.gamma.copy_(torch.tensor([-0.5, 1.5, 0.8]))
        bn.eval()
        dist = pd.TransformedDistribution(pd.Normal(torch.zeros(3), torch.ones(3)).to_event(1),
                                          [bn])
    report = _check_compare(dist, 3, 0, False)
    assert report.grad_peer["0.gamma"][0] == 0.0 == report.grad_refflow["0.gamma"][0]


def test_batchnorm_in_training_mode_is_refused():
    with _float64():
        dist = pd.TransformedDistribution(pd.Normal(torch.zeros(3), torch.ones(3)).to_event(1),
                                          [T.BatchNorm(3)])
    with pytest.raises(ValueError, match="BatchNorm: training mode"):
        from_pyro(dist)
