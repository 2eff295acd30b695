"""from_tfp: the imported refflow Flow computes exactly what the TFP (JAX substrate) flow does.

Every TFP model is built by ``_make(spec, theta)`` from a pytree ``theta`` of its trainable
arrays, randomly initialised and, for half of the configurations, briefly trained (a few Adam
steps on its own mean log-likelihood), in float64 (JAX's x64 mode, enabled for this test
process). Compared: log-probs at the flow's own samples, the samples from the same base noise,
and the gradient of the mean log-prob with respect to ``theta``.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
tfp = pytest.importorskip("tensorflow_probability.substrates.jax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from refflow.bijectors import LULinear, Permute  # noqa: E402
from refflow.interop import from_tfp  # noqa: E402

tfb, tfd = tfp.bijectors, tfp.distributions

#: float64 agreement of two implementations of the same closed-form map: rounding only.
RTOL_LOG_PROB = 1e-10
#: samples: the same closed forms.
ATOL_SAMPLE = 1e-10
#: directional derivatives of the same function by jax.grad and by refflow's pullbacks.
RTOL_GRAD = 1e-8

#: layers whose parameter becomes refflow's through a log (kept out of the gradient
#: directions, whose import must be linear; checked through the chain rule separately).
LOG_MAPPED = ("diag", "scale_pos")


def _spec(rng, dim, kinds):
    spec = []
    for kind in kinds:
        s = {"kind": kind}
        if kind in ("lu", "permute"):
            s["perm"] = rng.permutation(dim)
        spec.append(s)
    return spec


def _theta(spec, dim, rng):
    theta = []
    for s in spec:
        kind = s["kind"]
        if kind == "shift":
            theta.append({"shift": jnp.asarray(0.3 * rng.normal(size=dim))})
        elif kind == "scale":
            theta.append({"log_scale": jnp.asarray(0.3 * rng.normal(size=dim))})
        elif kind in ("scale_pos", "diag"):
            theta.append({"scale": jnp.asarray(rng.uniform(0.5, 1.5, dim))})
        elif kind in ("tril", "inv_tril"):
            m = 0.4 * rng.normal(size=(dim, dim))
            m[np.diag_indices(dim)] = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.6, 1.5, dim)
            theta.append({"matrix": jnp.asarray(m)})
        elif kind == "lu":
            m = 0.4 * rng.normal(size=(dim, dim))
            m[np.diag_indices(dim)] = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.6, 1.5, dim)
            theta.append({"lower_upper": jnp.asarray(m)})
        else:
            theta.append({})
    return theta


def _layer(s, t):
    kind = s["kind"]
    if kind == "shift":
        return tfb.Shift(t["shift"])
    if kind == "scale":
        return tfb.Scale(log_scale=t["log_scale"])
    if kind == "scale_pos":
        return tfb.Scale(scale=t["scale"])
    if kind == "diag":
        return tfb.ScaleMatvecDiag(t["scale"])
    if kind == "tril":
        return tfb.ScaleMatvecTriL(t["matrix"])
    if kind == "inv_tril":
        return tfb.Invert(tfb.ScaleMatvecTriL(t["matrix"]))
    if kind == "lu":
        return tfb.ScaleMatvecLU(t["lower_upper"], jnp.asarray(s["perm"]))
    if kind == "permute":
        return tfb.Permute(jnp.asarray(s["perm"]))
    return {"exp": tfb.Exp, "softplus": tfb.Softplus, "sigmoid": tfb.Sigmoid,
            "tanh": tfb.Tanh}[kind]()


def _make(spec, theta, dim, base_kind):
    bij = tfb.Chain([_layer(s, t) for s, t in zip(spec, theta)][::-1])  # TFP: last first
    loc, scale = jnp.linspace(-0.3, 0.3, dim), jnp.linspace(0.8, 1.3, dim)
    if base_kind == "mvn":
        base = tfd.MultivariateNormalDiag(loc, scale)
    else:
        base = tfd.Independent(tfd.Normal(loc, scale), 1)
    return tfd.TransformedDistribution(base, bij)


def _model(seed, dim, kinds, base_kind, trained):
    rng = np.random.default_rng(seed)
    spec = _spec(rng, dim, kinds)
    theta = _theta(spec, dim, rng)
    if trained:
        optax = pytest.importorskip("optax")
        z = rng.normal(size=(64, dim))
        x = np.asarray(_make(spec, theta, dim, base_kind).bijector.forward(jnp.asarray(z)))
        x = jnp.asarray(x)  # its own samples: in the domain of every layer
        frozen = [s["kind"] in LOG_MAPPED for s in spec]  # kept positive: not trained

        def loss(p):
            full = [t if f else q for t, q, f in zip(theta, p, frozen)]
            return -jnp.mean(_make(spec, full, dim, base_kind).log_prob(x))

        opt = optax.adam(1e-2)
        params = theta
        state = opt.init(params)
        for _ in range(5):
            updates, state = opt.update(jax.grad(loss)(params), state)
            params = optax.apply_updates(params, updates)
        theta = [t if f else q for t, q, f in zip(theta, params, frozen)]
    return spec, theta


# kinds in forward order (the first is applied first to base samples), dim, base, trained
# (bounded-image layers, Exp, Softplus, Sigmoid, Tanh, come last: their data-side domain does
# not move with the parameters, so the flow's own samples stay valid while it trains)
CONFIGS = [
    (("shift", "scale"), 3, "mvn", False),
    (("tril", "shift"), 4, "independent", True),
    (("lu", "permute", "lu"), 3, "mvn", True),
    (("exp", "scale", "shift"), 2, "independent", False),
    (("lu", "softplus"), 4, "mvn", True),
    (("sigmoid", "shift", "inv_tril"), 3, "independent", False),
    (("tril", "permute", "scale", "tanh"), 5, "mvn", True),
    (("diag", "lu", "shift"), 3, "independent", False),
    (("scale_pos", "permute", "tril"), 4, "mvn", True),
    (("lu", "scale", "inv_tril", "shift"), 2, "independent", True),
    (("permute", "tril", "exp"), 3, "mvn", False),
    (("shift", "lu", "scale", "tril", "sigmoid"), 4, "independent", True),
]


def _points(dist, dim, seed, n=40):
    z = np.random.default_rng(seed + 1000).normal(size=(n, dim))
    return z, np.asarray(dist.bijector.forward(jnp.asarray(z)))


@pytest.mark.parametrize("kinds, dim, base_kind, trained", CONFIGS)
def test_log_prob_and_samples_match(kinds, dim, base_kind, trained):
    seed = CONFIGS.index((kinds, dim, base_kind, trained))
    spec, theta = _model(seed, dim, kinds, base_kind, trained)
    dist = _make(spec, theta, dim, base_kind)
    model = from_tfp(dist)
    z, x = _points(dist, dim, seed)
    lp_peer = np.asarray(dist.log_prob(jnp.asarray(x)))
    lp_ref = model.log_prob(x)
    rel = np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)
    assert rel.max() <= RTOL_LOG_PROB, rel.max()
    x_ref = model.bijector.forward(z)[0]
    assert np.abs(x_ref - x).max() <= ATOL_SAMPLE * max(1.0, np.abs(x).max())


@pytest.mark.parametrize("kinds, dim, base_kind, trained", CONFIGS)
def test_gradients_match_along_random_directions(kinds, dim, base_kind, trained):
    """``jax.grad`` of the mean log-prob along a random direction of every array of ``theta``
    whose import is a copy (all but ``LOG_MAPPED``), against refflow's gradient dotted with
    ``import(theta + delta) - import(theta)``; the log-mapped ones by the chain rule
    ``d/ds = (d/d log s) / s`` on their own ``Affine`` layer."""
    seed = CONFIGS.index((kinds, dim, base_kind, trained))
    spec, theta = _model(seed, dim, kinds, base_kind, trained)
    dist = _make(spec, theta, dim, base_kind)
    model = from_tfp(dist)
    _, x = _points(dist, dim, seed, n=20)

    def mean_log_prob(p):
        return jnp.mean(_make(spec, p, dim, base_kind).log_prob(jnp.asarray(x)))

    grads = jax.grad(mean_log_prob)(theta)
    _, ref = model.nll_and_grad(x)
    ref = {k: -v for k, v in ref.items()}
    rng = np.random.default_rng(seed + 7)
    peer, moved = 0.0, []
    for s, t, g in zip(spec, theta, grads):
        moved.append(dict(t))
        if s["kind"] in LOG_MAPPED:
            continue
        for k in t:
            delta = rng.normal(size=np.shape(t[k]))
            peer += float(np.sum(np.asarray(g[k]) * delta))
            moved[-1][k] = jnp.asarray(np.asarray(t[k]) + delta)
    after = from_tfp(_make(spec, moved, dim, base_kind)).params
    before = model.params
    mine = sum(float(np.sum(ref[k] * (after[k] - before[k]))) for k in ref)
    assert abs(peer) > 0
    assert abs(mine - peer) <= RTOL_GRAD * max(abs(peer), 1.0), (peer, mine)
    # the log-mapped scales: the i-th such layer is the i-th Affine whose log_scale is log(s)
    for i, s in enumerate(spec):
        if s["kind"] not in LOG_MAPPED:
            continue
        scale = np.asarray(theta[i]["scale"])
        keys = [k for k in before if k.endswith(".log_scale") and k.startswith("bijector.layers.")
                and np.array_equal(before[k], np.log(scale))]
        assert len(keys) == 1
        mine_s = ref[keys[0]] / scale
        peer_s = np.asarray(grads[i]["scale"])
        assert np.abs(mine_s - peer_s).max() <= RTOL_GRAD * max(np.abs(peer_s).max(), 1.0)


def test_lu_and_permute_structure():
    perm = jnp.asarray([2, 0, 1])
    lu = jnp.asarray([[1.5, 0.2, -0.3], [0.4, -0.8, 0.1], [0.3, 0.2, 1.1]])
    model = from_tfp(tfb.Chain([tfb.Permute(perm), tfb.ScaleMatvecLU(lu, perm)]),
                     base=tfd.MultivariateNormalDiag(jnp.zeros(3), jnp.ones(3)))
    lu_layer, permute = model.bijector.layers
    assert isinstance(lu_layer, LULinear) and isinstance(permute, Permute)
    assert lu_layer.buffers["permutation"].tolist() == np.argsort([2, 0, 1]).tolist()
    assert permute.buffers["permutation"].tolist() == [2, 0, 1]


def _mvn(dim):
    return tfd.MultivariateNormalDiag(jnp.zeros(dim), jnp.ones(dim))


def test_rational_quadratic_spline_is_refused_naming_its_moving_range():
    spline = tfb.RationalQuadraticSpline(jnp.ones(4) / 2, jnp.ones(4) / 2, jnp.ones(3))
    with pytest.raises(ValueError, match="RationalQuadraticSpline.*moving range"):
        from_tfp(spline, base=_mvn(2))


def test_maf_and_realnvp_are_refused_naming_the_callable():
    def fn(x, output_units):
        return x[..., :output_units], x[..., :output_units]

    with pytest.raises(ValueError, match="RealNVP.*cannot be read"):
        from_tfp(tfb.RealNVP(num_masked=1, shift_and_log_scale_fn=fn), base=_mvn(2))
    maf = tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=lambda x: (x, x))
    with pytest.raises(ValueError, match="MaskedAutoregressiveFlow.*cannot be read"):
        from_tfp(maf, base=_mvn(2))


def test_options_refflow_cannot_reproduce_are_refused():
    with pytest.raises(ValueError, match="Sigmoid.*low/high"):
        from_tfp(tfb.Sigmoid(low=-1.0, high=2.0), base=_mvn(2))
    with pytest.raises(ValueError, match="Softplus.*hinge_softness"):
        from_tfp(tfb.Softplus(hinge_softness=0.5), base=_mvn(2))
    with pytest.raises(ValueError, match="Scale.*negative"):
        from_tfp(tfb.Scale(-2.0), base=_mvn(2))
    with pytest.raises(NotImplementedError, match="Sinh"):
        from_tfp(tfb.Sinh(), base=_mvn(2))
    with pytest.raises(TypeError, match="from_tfp.*base="):
        from_tfp(tfb.Exp())
    with pytest.raises(TypeError, match="from_tfp"):
        from_tfp(object())
