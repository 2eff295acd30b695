"""from_distrax: the imported refflow Flow computes exactly what the distrax flow computes.

Every distrax model is built by ``_make(spec, theta)`` from a pytree ``theta`` of its trainable
parameters (distrax bijectors are not pytrees; equinox MLPs serve as the couplings'
conditioners, the only conditioners whose weights can be read), randomly initialised and,
for half of the configurations, briefly trained (a few Adam steps on its own mean
log-likelihood, ``jax.grad`` through distrax), in float64 (JAX's x64 mode, enabled for this
test process). Compared: log-probs at the flow's own samples, the samples from the same base
noise, and the gradient of the mean log-prob with respect to ``theta``.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
distrax = pytest.importorskip("distrax")
eqx = pytest.importorskip("equinox")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

from refflow.bijectors import Affine, Inverse, LULinear, SplineCoupling  # noqa: E402
from refflow.interop import from_distrax  # noqa: E402

#: float64 agreement of two implementations of the same closed-form map: rounding only.
RTOL_LOG_PROB = 1e-10
#: samples: the same closed forms.
ATOL_SAMPLE = 1e-10
#: directional derivatives of the same function by jax.grad and by refflow's pullbacks.
RTOL_GRAD = 1e-8

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "elu": jax.nn.elu,
               "softplus": jax.nn.softplus}
KINDS = ("coupling_rqs", "coupling_affine", "lu", "triangular", "unconstrained", "affine",
         "tanh", "sigmoid", "shift")


# ------------------------------------------------------------------------------ builders
def _spec(rng, dim, kinds):
    """Static configuration of a random flow (distrax forward order: the first entry is
    applied first to base samples)."""
    spec = []
    for i, kind in enumerate(kinds):
        s = {"kind": kind}
        if kind.startswith("coupling"):
            keep = rng.permutation(np.arange(dim) < max(1, dim // 2))
            s.update(mask=keep, width=int(rng.integers(4, 12)), depth=int(rng.integers(1, 3)),
                     act=str(rng.choice(list(ACTIVATIONS))), interleaved=bool(i % 2))
        if kind == "coupling_rqs":
            lo = float(rng.choice([-3.0, -2.0, -4.0]))
            hi = -lo if rng.random() < 0.5 else lo + float(rng.uniform(4.5, 7.0))
            s.update(bins=int(rng.integers(2, 7)), range=(lo, hi),
                     boundary=str(rng.choice(["unconstrained", "lower_identity",
                                              "upper_identity", "identity", "circular"])),
                     min_bin=float(rng.choice([1e-4, 1e-3, 0.05])),
                     min_slope=float(rng.choice([1e-4, 1e-3, 0.1])))
        if kind == "triangular":
            s["lower"] = bool(rng.integers(0, 2))
        if kind == "affine":
            s["scalar"] = bool(rng.integers(0, 2))
        spec.append(s)
    return spec


def _theta(spec, dim, key):
    """Random trainable parameters of ``spec`` (a list of dicts of arrays / equinox MLPs)."""
    theta = []
    rng = np.random.default_rng(int(jr.randint(key, (), 0, 2 ** 31 - 1)))
    for i, s in enumerate(spec):
        kind = s["kind"]
        if kind.startswith("coupling"):
            n_out = dim * (3 * s["bins"] + 1 if kind == "coupling_rqs" else 2)
            mlp = eqx.nn.MLP(dim, n_out, s["width"], s["depth"], ACTIVATIONS[s["act"]],
                             key=jr.fold_in(key, i))
            theta.append({"mlp": mlp})
        elif kind in ("lu", "unconstrained"):
            theta.append({"matrix": jnp.asarray(np.eye(dim) + 0.4 * rng.normal(size=(dim, dim))),
                          "bias": jnp.asarray(0.3 * rng.normal(size=dim))})
        elif kind == "triangular":
            m = 0.4 * rng.normal(size=(dim, dim))
            m[np.diag_indices(dim)] = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.6, 1.5, dim)
            theta.append({"matrix": jnp.asarray(m)})
        elif kind == "affine":
            shape = () if s["scalar"] else (dim,)
            theta.append({"shift": jnp.asarray(0.3 * rng.normal(size=shape)),
                          "log_scale": jnp.asarray(0.3 * rng.normal(size=shape))})
        elif kind == "shift":
            theta.append({"shift": jnp.asarray(0.3 * rng.normal(size=dim))})
        else:
            theta.append({})
    return theta


def _inner_fn(s, dim):
    if s["kind"] == "coupling_affine":
        if s["interleaved"]:
            return lambda p: distrax.ScalarAffine(shift=p.reshape(dim, 2)[:, 0],
                                                  log_scale=p.reshape(dim, 2)[:, 1])
        return lambda p: distrax.ScalarAffine(shift=p[:dim], log_scale=p[dim:])
    K = s["bins"]
    return lambda p: distrax.RationalQuadraticSpline(
        p.reshape(dim, 3 * K + 1), range_min=s["range"][0], range_max=s["range"][1],
        boundary_slopes=s["boundary"], min_bin_size=s["min_bin"], min_knot_slope=s["min_slope"])


def _layer(s, t, dim):
    kind = s["kind"]
    if kind.startswith("coupling"):
        return distrax.MaskedCoupling(jnp.asarray(s["mask"]), t["mlp"], _inner_fn(s, dim))
    if kind == "lu":
        return distrax.LowerUpperTriangularAffine(t["matrix"], t["bias"])
    if kind == "unconstrained":
        return distrax.UnconstrainedAffine(t["matrix"], t["bias"])
    if kind == "triangular":
        return distrax.TriangularLinear(t["matrix"], is_lower=s["lower"])
    if kind == "affine":
        return distrax.Block(distrax.ScalarAffine(t["shift"], log_scale=t["log_scale"]), 1)
    if kind == "shift":
        return distrax.Block(distrax.Shift(t["shift"]), 1)
    if kind == "tanh":
        return distrax.Block(distrax.Tanh(), 1)
    return distrax.Block(distrax.Sigmoid(), 1)


def _make(spec, theta, dim, base_kind):
    layers = [_layer(s, t, dim) for s, t in zip(spec, theta)]
    bij = distrax.Chain(layers[::-1])  # distrax applies the last entry first
    loc, scale = jnp.linspace(-0.3, 0.3, dim), jnp.linspace(0.8, 1.3, dim)
    if base_kind == "mvn":
        base = distrax.MultivariateNormalDiag(loc, scale)
    else:
        base = distrax.Independent(distrax.Normal(loc, scale), 1)
    return distrax.Transformed(base, bij)


def _train(spec, theta, dim, base_kind, x, steps):
    """A few Adam steps on the model's own mean negative log-likelihood at ``x``."""
    optax = pytest.importorskip("optax")
    params, static = eqx.partition(theta, eqx.is_inexact_array)

    def loss(p):
        d = _make(spec, eqx.combine(p, static), dim, base_kind)
        return -jnp.mean(jax.vmap(d.log_prob)(jnp.asarray(x)))

    opt = optax.adam(1e-2)
    state = opt.init(params)
    for _ in range(steps):
        g = jax.grad(loss)(params)
        updates, state = opt.update(g, state)
        params = optax.apply_updates(params, updates)
    return eqx.combine(params, static)


def _model(seed, dim, kinds, base_kind, trained):
    rng = np.random.default_rng(seed)
    spec = _spec(rng, dim, kinds)
    theta = _theta(spec, dim, jr.key(seed))
    if trained:
        d = _make(spec, theta, dim, base_kind)
        z = rng.normal(size=(64, dim))
        x = np.asarray(jax.vmap(d.bijector.forward)(jnp.asarray(z)))
        theta = _train(spec, theta, dim, base_kind, x, 5)  # its own samples: in every domain
    return spec, theta


# kinds in forward order, dim, base, trained
CONFIGS = [
    (("coupling_rqs",), 3, "mvn", False),
    (("coupling_rqs", "coupling_rqs"), 4, "independent", True),
    (("coupling_affine",), 2, "independent", False),
    (("coupling_affine", "lu", "coupling_affine"), 5, "mvn", True),
    (("lu", "affine"), 3, "mvn", False),
    (("triangular", "shift", "triangular"), 4, "independent", True),
    (("unconstrained", "affine"), 3, "independent", False),
    (("affine", "lu", "tanh"), 3, "mvn", True),
    (("sigmoid", "unconstrained", "coupling_rqs"), 4, "mvn", False),
    (("affine", "coupling_rqs", "triangular", "coupling_affine"), 4, "independent", True),
    (("coupling_rqs", "unconstrained", "coupling_rqs"), 3, "independent", True),
    (("shift", "coupling_affine", "tanh", "affine"), 2, "mvn", False),
]


def _points(dist, dim, seed, n=40):
    """The flow's own samples ``x = T(z)`` (in the domain of every layer) and their noise."""
    z = np.random.default_rng(seed + 1000).normal(size=(n, dim))
    x = np.asarray(jax.vmap(dist.bijector.forward)(jnp.asarray(z)))
    return z, x


def _log_prob_and_samples_match(dist, model, dim, seed):
    """The imported model's log-probs (1e-10 relative) and samples (the same noise) agree."""
    z, x = _points(dist, dim, seed)
    lp_peer = np.asarray(jax.vmap(dist.log_prob)(jnp.asarray(x)))
    lp_ref = model.log_prob(x)
    rel = np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)
    assert rel.max() <= RTOL_LOG_PROB, rel.max()
    x_ref = model.bijector.forward(z)[0]
    assert np.abs(x_ref - x).max() <= ATOL_SAMPLE * max(1.0, np.abs(x).max())


def _lu_grad(layer, ref, prefix):
    """The gradient with respect to ``A = P L U`` from refflow's gradients with respect to the
    LU entries: ``A_bar = P L^-T H U^-T`` with ``H = strict_lower(L^T L_bar) + upper(U_bar
    U^T)`` (from ``dL = L strict_lower(F)``, ``dU = upper(F) U``, ``F = L^-1 P^T dA U^-1``)."""
    dim = layer.dim
    low, up = np.eye(dim), np.zeros((dim, dim))
    low[np.tril_indices(dim, -1)] = layer.params["lower_entries"]
    up[np.triu_indices(dim, 1)] = layer.params["upper_entries"]
    up[np.diag_indices(dim)] = layer.params["unconstrained_upper_diag"]
    l_bar, u_bar = np.zeros((dim, dim)), np.zeros((dim, dim))
    l_bar[np.tril_indices(dim, -1)] = ref[prefix + "lower_entries"]
    u_bar[np.triu_indices(dim, 1)] = ref[prefix + "upper_entries"]
    u_bar[np.diag_indices(dim)] = ref[prefix + "unconstrained_upper_diag"]
    h = np.tril(low.T @ l_bar, -1) + np.triu(u_bar @ up.T)
    p = np.eye(dim)[layer.buffers["permutation"]]  # (P v)_i = v_perm[i]: A = P M
    return p @ np.linalg.solve(low.T, np.linalg.solve(up, h.T).T)


@pytest.mark.parametrize("kinds, dim, base_kind, trained", CONFIGS)
def test_log_prob_samples_and_gradients_match(kinds, dim, base_kind, trained):
    """Log-probs and samples (1e-10), then ``jax.grad`` of the mean log-prob with respect to
    every trainable array of ``theta``, against refflow's: along random directions for the
    layers whose import is a copy or a selection (refflow's gradient dotted with
    ``import(theta + delta) - import(theta)``); entry by entry through the LU chain rule for
    ``UnconstrainedAffine``'s matrix. One test per model: building and training it (JAX
    compiles per configuration) is most of the cost."""
    seed = CONFIGS.index((kinds, dim, base_kind, trained))
    spec, theta = _model(seed, dim, kinds, base_kind, trained)
    dist = _make(spec, theta, dim, base_kind)
    model = from_distrax(dist)
    _log_prob_and_samples_match(dist, model, dim, seed)
    _, x = _points(dist, dim, seed, n=20)
    params, static = eqx.partition(theta, eqx.is_inexact_array)

    def mean_log_prob(p):
        d = _make(spec, eqx.combine(p, static), dim, base_kind)
        return jnp.mean(jax.vmap(d.log_prob)(jnp.asarray(x)))

    grads = jax.grad(mean_log_prob)(params)
    _, ref = model.nll_and_grad(x)
    ref = {k: -v for k, v in ref.items()}  # gradient of the mean log-prob
    rng = np.random.default_rng(seed + 7)
    # UnconstrainedAffine matrices: entry by entry; every other leaf: along a direction
    checked = 0
    layers = model.bijector.layers
    for i, s in enumerate(spec):
        if s["kind"] != "unconstrained":
            continue
        lu = [b for b in layers if isinstance(b, LULinear)
              and np.array_equal(b.params["bias"], np.asarray(theta[i]["bias"]))]
        assert len(lu) == 1
        mine = _lu_grad(lu[0], ref, f"bijector.layers.{layers.index(lu[0])}.")
        peer = np.asarray(grads[i]["matrix"])
        assert np.abs(mine - peer).max() <= RTOL_GRAD * max(np.abs(peer).max(), 1.0)
        checked += 1
    assert checked == sum(s["kind"] == "unconstrained" for s in spec)
    peer, moved = 0.0, []
    for i, s in enumerate(spec):
        moved.append({})
        for k, value in params[i].items():
            if s["kind"] == "unconstrained" and k == "matrix":
                moved[i][k] = value
                continue
            leaves, tree = jax.tree_util.tree_flatten(value)
            g_leaves = jax.tree_util.tree_leaves(grads[i][k])
            assert len(g_leaves) == len(leaves)
            delta = [rng.normal(size=np.shape(leaf)) for leaf in leaves]
            peer += sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(g_leaves, delta))
            moved[i][k] = jax.tree_util.tree_unflatten(
                tree, [jnp.asarray(np.asarray(leaf) + d) for leaf, d in zip(leaves, delta)])
    after = from_distrax(_make(spec, eqx.combine(moved, static), dim, base_kind)).params
    before = model.params
    mine = sum(float(np.sum(ref[k] * (after[k] - before[k]))) for k in ref)
    assert abs(peer) > 0
    assert abs(mine - peer) <= RTOL_GRAD * max(abs(peer), 1.0), (peer, mine)


# ------------------------------------------------------------------------------ structure
def _mvn(dim):
    return distrax.MultivariateNormalDiag(jnp.zeros(dim), jnp.ones(dim))


def _mlp(dim, n_out, key=0):
    return eqx.nn.MLP(dim, n_out, 8, 1, jax.nn.relu, key=jr.key(key))


def test_asymmetric_spline_range_is_a_shifted_symmetric_spline():
    fn = lambda p: distrax.RationalQuadraticSpline(p.reshape(3, 10), -1.0, 4.0)  # noqa: E731
    coupling = distrax.MaskedCoupling(jnp.asarray([True, False, False]), _mlp(3, 30), fn)
    layers = from_distrax(distrax.Transformed(_mvn(3), coupling)).bijector.layers
    assert [type(b) for b in layers] == [Affine, Inverse, Affine]
    assert np.all(layers[0].params["shift"] == -1.5) and np.all(layers[2].params["shift"] == 1.5)
    spline = layers[1].bijector
    assert isinstance(spline, SplineCoupling) and spline.parameterization == "distrax"
    assert spline._map.bound == 2.5 and spline._map.min_bin_width == 1e-4
    assert spline.buffers["mask"].tolist() == [False, True, True]


def test_standalone_spline_is_refused_naming_what_distrax_does_not_keep():
    spline = distrax.RationalQuadraticSpline(jnp.zeros((2, 13)), -3.0, 3.0)
    with pytest.raises(ValueError, match="RationalQuadraticSpline.*knots"):
        from_distrax(distrax.Transformed(_mvn(2), distrax.Block(spline, 1)))


def test_lambda_is_refused_by_name():
    lam = distrax.Lambda(forward=lambda x: 2 * x, inverse=lambda y: y / 2,
                         forward_log_det_jacobian=lambda x: jnp.full(x.shape, jnp.log(2.0)),
                         event_ndims_in=0)
    with pytest.raises(NotImplementedError, match="Lambda"):
        from_distrax(distrax.Transformed(_mvn(2), distrax.Block(lam, 1)))


def test_opaque_conditioner_is_refused_naming_it():
    def my_conditioner(x):
        return jnp.concatenate([x, x])

    coupling = distrax.MaskedCoupling(
        jnp.asarray([True, False]), my_conditioner,
        lambda p: distrax.ScalarAffine(shift=p[:2], log_scale=p[2:]))
    with pytest.raises(ValueError, match="MaskedCoupling.*my_conditioner.*cannot be read"):
        from_distrax(distrax.Transformed(_mvn(2), coupling))


@pytest.mark.parametrize("fn", [
    lambda p: distrax.ScalarAffine(shift=p[:2], log_scale=jax.nn.softplus(p[2:])),
    lambda p: distrax.ScalarAffine(shift=p[:2], scale=p[2:]),
    lambda p: distrax.ScalarAffine(shift=p[:2] + 1.0, log_scale=p[2:]),
])
def test_inner_function_computing_with_the_parameters_is_refused(fn):
    coupling = distrax.MaskedCoupling(jnp.asarray([True, False]), _mlp(2, 4), fn)
    with pytest.raises(ValueError, match="MaskedCoupling.*not a selection"):
        from_distrax(distrax.Transformed(_mvn(2), coupling))


def test_scalar_bijector_outside_block_is_refused():
    with pytest.raises(ValueError, match="Tanh.*Block"):
        from_distrax(distrax.Tanh(), base=_mvn(2))


def test_negative_scale_is_refused():
    flow = distrax.Transformed(_mvn(2), distrax.Block(distrax.ScalarAffine(0.0, -2.0), 1))
    with pytest.raises(ValueError, match="ScalarAffine.*negative"):
        from_distrax(flow)


def test_bare_bijector_with_a_base_and_bad_arguments():
    bij = distrax.Block(distrax.ScalarAffine(0.5, log_scale=0.2), 1)
    model = from_distrax(bij, base=_mvn(2))
    x = np.array([[0.3, -1.0]])
    lp = np.asarray(distrax.Transformed(_mvn(2), bij).log_prob(jnp.asarray(x)))
    assert np.allclose(model.log_prob(x), lp, rtol=RTOL_LOG_PROB, atol=0.0)
    with pytest.raises(TypeError, match="from_distrax.*base="):
        from_distrax(bij)
    with pytest.raises(TypeError, match="from_distrax"):
        from_distrax(object())
    with pytest.raises(NotImplementedError, match="Normal.*base"):
        from_distrax(bij, base=distrax.Normal(0.0, 1.0))
