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


@pytest.mark.parametrize("make, name", [
    (lambda: T.affine_autoregressive(3, hidden_dims=[8]),
     "AffineAutoregressive"),
    (lambda: T.BlockAutoregressive(3), "BlockAutoregressive"),
    (lambda: T.Spline(3), "Spline"),
    (lambda: T.Sylvester(3, 2), "Sylvester"),
])
def test_unsupported_transforms_are_refused_by_name(make, name):
    base = pd.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    with pytest.raises(NotImplementedError, match=name):
        from_pyro(pd.TransformedDistribution(base, [make()]))


def test_bad_arguments():
    with pytest.raises(TypeError, match="from_pyro"):
        from_pyro(object())
    with pytest.raises(NotImplementedError, match="base distribution"):
        from_pyro([T.Permute(torch.arange(2))], pd.Uniform(torch.zeros(2), 1).to_event(1))


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
