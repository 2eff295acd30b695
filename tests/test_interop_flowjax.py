"""from_flowjax: the imported refflow Flow computes exactly what the FlowJAX flow computes.

Every FlowJAX model is built by FlowJAX's own builders, then every trainable leaf is moved by
a random amount (a model far from its initialisation, as after training), in float64 (JAX's
x64 mode, enabled for this test process). Compared: log-probs, and samples from the same base
noise (FlowJAX's ``bijection.transform(z)`` against refflow's ``bijector.forward(z)``).
"""

from functools import partial

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flowjax")
jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import paramax  # noqa: E402
from flowjax.bijections import (  # noqa: E402
    Affine, Chain, Invert, Permute, RationalQuadraticSpline, TriangularAffine, Vmap,
)
from flowjax.distributions import (  # noqa: E402
    Normal, StandardNormal, StudentT, Transformed, Uniform,
)
from flowjax.flows import (  # noqa: E402
    block_neural_autoregressive_flow, coupling_flow, masked_autoregressive_flow, planar_flow,
    triangular_spline_flow,
)

from refflow.bijectors import BlockNeuralAutoregressive, Inverse  # noqa: E402
from refflow.interop import from_flowjax  # noqa: E402

#: float64 agreement of two implementations of the same closed-form map: rounding only.
RTOL_LOG_PROB = 1e-10
#: samples: the same closed forms (and, for BNAF, refflow's root solved to a few ulps).
ATOL_SAMPLE = 1e-10


def _perturb(dist, seed, size=0.3):
    """Every trainable leaf moved by ``size * N(0, 1)`` (FlowJAX's own partition of leaves)."""
    params, static = eqx.partition(dist, eqx.is_inexact_array,
                                   is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(np.asarray(leaf) + size * rng.normal(size=leaf.shape))
              for leaf in leaves]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


def _exp_affine():
    """An ``Affine`` transformer with ``scale = exp(u)`` (refflow's ``"exp"`` scale map)."""
    return eqx.tree_at(lambda a: a.scale, Affine(),
                       replace=paramax.Parameterize(jnp.exp, jnp.asarray(0.0)))


NEW_KINDS = ("maf_rqs", "coupling_rqs", "maf_default", "coupling_default", "triangular")


def _triangular_chain(key, dim, weight_norm):
    """FlowJAX's triangular_spline_flow layer without its LeakyTanh sandwich: ``Vmap``'d
    splines, a (weight-normalised) ``TriangularAffine`` and a permutation."""
    tri = TriangularAffine(jnp.zeros(dim), jnp.eye(dim) + 0.3 * jr.normal(key, (dim, dim)))
    if weight_norm:
        tri = eqx.tree_at(lambda t: t.triangular, tri, replace_fn=paramax.WeightNormalization)
    splines = Vmap(eqx.filter_vmap(partial(RationalQuadraticSpline, knots=4, interval=2.0),
                                   axis_size=dim)(), in_axes=eqx.if_array(0))
    return Chain([splines, tri, Permute(jnp.asarray(np.arange(dim)[::-1].copy()))])


def _build(kind, seed, cond, invert, dim):
    key = jr.key(seed)
    base = StandardNormal((dim,)) if seed % 2 else Normal(jnp.full(dim, 0.5),
                                                          jnp.full(dim, 1.7))
    if seed % 3 == 2 and kind in NEW_KINDS:  # the other bases FlowJAX offers
        base = StudentT(jnp.full(dim, 4.0), jnp.full(dim, 0.2), jnp.full(dim, 1.5)) \
            if seed % 2 else Uniform(jnp.full(dim, -30.0), jnp.full(dim, 40.0))
    interval = 2.0 + seed % 2 if seed % 2 else (-1.5, 2.5)  # symmetric or not
    spline = RationalQuadraticSpline(knots=3 + seed % 3, interval=interval)
    if kind == "maf_rqs":
        return masked_autoregressive_flow(key, base_dist=base, transformer=spline,
                                          cond_dim=cond, flow_layers=2, nn_width=3 * dim,
                                          nn_depth=1 + seed % 2, invert=invert)
    if kind == "coupling_rqs":
        return coupling_flow(key, base_dist=base, transformer=spline, cond_dim=cond,
                             flow_layers=2, nn_width=8, nn_depth=1 + seed % 2, invert=invert)
    if kind == "maf_default":  # FlowJAX's default affine: softplus(u) + 0.01
        return masked_autoregressive_flow(key, base_dist=base, cond_dim=cond, flow_layers=2,
                                          nn_width=3 * dim, invert=invert)
    if kind == "coupling_default":
        return coupling_flow(key, base_dist=base, cond_dim=cond, flow_layers=2, nn_width=8,
                             invert=invert)
    if kind == "triangular":
        bij = _triangular_chain(key, dim, seed % 2 == 0)
        return Transformed(base, Invert(bij) if invert else bij)
    if kind == "planar":  # FlowJAX's constraint m(s) = -1 + log(1 + softplus(s))
        return planar_flow(key, base_dist=base, flow_layers=2 + seed % 2, invert=invert)
    if kind == "triangular_spline":  # splines in a LeakyTanh sandwich, weight-normed affine
        return triangular_spline_flow(key, base_dist=base, flow_layers=2, knots=3 + seed % 3,
                                      tanh_max_val=2.0 + seed % 2, invert=invert)
    if kind == "maf":
        return masked_autoregressive_flow(key, base_dist=base, transformer=_exp_affine(),
                                          cond_dim=cond, flow_layers=2, nn_width=3 * dim,
                                          nn_depth=1 + seed % 2, invert=invert)
    if kind == "coupling":
        return coupling_flow(key, base_dist=base, transformer=_exp_affine(), cond_dim=cond,
                             flow_layers=2, nn_width=8, nn_depth=1 + seed % 2,
                             nn_activation=jax.nn.relu if seed % 2 else jnp.tanh,
                             invert=invert)
    return block_neural_autoregressive_flow(key, base_dist=base, cond_dim=cond,
                                            nn_depth=1 + seed % 2, nn_block_dim=3,
                                            flow_layers=2, invert=invert)


# kind, seed, condition size, invert, dim: 12 configurations (MAF, coupling, BNAF)
CONFIGS = [
    ("maf", 0, None, True, 3), ("maf", 1, None, False, 4), ("maf", 2, 2, True, 3),
    ("maf", 3, 3, False, 2), ("maf", 4, 1, True, 5),
    ("coupling", 0, None, True, 4), ("coupling", 1, None, False, 5),
    ("coupling", 2, 2, True, 3),
    ("bnaf", 0, None, True, 3), ("bnaf", 1, 2, True, 2), ("bnaf", 2, None, False, 3),
    ("bnaf", 3, 1, False, 4),
    # the spline transformer, the default affine map, triangular layers, StudentT / Uniform
    # bases (more configurations: benchmarks/check_importers.py --peers flowjax)
    ("maf_rqs", 4, 1, True, 3), ("coupling_rqs", 1, None, False, 4),
    ("maf_default", 0, 2, True, 3), ("triangular", 5, None, True, 3),
    # planar flows (FlowJAX's tanh planar has no inverse: invert=True, its default) and
    # triangular_spline_flow (LeakyTanh sandwich)
    ("planar", 1, None, True, 3), ("planar", 2, None, True, 2),
    ("triangular_spline", 0, None, True, 3), ("triangular_spline", 1, None, False, 4),
    ("triangular_spline", 2, None, True, 2),
]


def _vmapped(fn, *arrays):
    return np.asarray(jax.vmap(fn)(*(jnp.asarray(a) for a in arrays if a is not None)))


@pytest.mark.parametrize("kind, seed, cond, invert, dim", CONFIGS)
def test_log_prob_and_samples_match(kind, seed, cond, invert, dim):
    dist = _perturb(_build(kind, seed, cond, invert, dim), seed + 100)
    model = from_flowjax(dist)
    rng = np.random.default_rng(seed)
    n = 40
    c = None if cond is None else rng.normal(size=(n, cond))
    z = rng.normal(size=(n, dim))
    if kind == "bnaf" and not invert:
        # FlowJAX's log_prob would run its bisection (tolerance ~1e-5); compare at x = T(z)
        # with the closed-form density base(z) - log|det dT/dz| instead.
        x = _vmapped(dist.bijection.transform, z, c)
        _, ld = jax.vmap(dist.bijection.transform_and_log_det)(
            *(jnp.asarray(a) for a in (z, c) if a is not None))
        lp_peer = _vmapped(dist.base_dist.log_prob, z) - np.asarray(ld)
    else:
        x = 1.5 * rng.normal(size=(n, dim))
        lp_peer = _vmapped(dist.log_prob, x, c)
    lp_ref = model.log_prob(x, context=c)
    rel = np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)
    assert rel.max() <= RTOL_LOG_PROB, rel.max()
    x_ref = model.bijector.forward(z, context=c)[0]
    if kind in ("bnaf", "planar") and invert:
        # FlowJAX samples through its bisection (BNAF) or cannot invert (tanh planar); check
        # refflow's sample with FlowJAX's closed form instead: the data-to-base map takes it
        # back to the base noise.
        z_back = _vmapped(dist.bijection.inverse, x_ref, c)
        assert np.abs(z_back - z).max() <= ATOL_SAMPLE
    else:
        x_peer = _vmapped(dist.bijection.transform, z, c)
        assert np.abs(x_ref - x_peer).max() <= ATOL_SAMPLE * max(1.0, np.abs(x_peer).max())


def test_structure_of_an_imported_bnaf():
    dist = block_neural_autoregressive_flow(jr.key(0), base_dist=StandardNormal((3,)),
                                            flow_layers=1)
    layers = from_flowjax(dist).bijector.layers
    # Invert(Scan([Chain([NumericalInverse(BNAF), Permute])])) -> [Permute^-1, BNAF]
    assert isinstance(layers[-1], BlockNeuralAutoregressive)
    assert not any(isinstance(b, Inverse) for b in layers)


def test_spline_transformer_layers_of_the_import():
    dist = coupling_flow(jr.key(0), base_dist=StandardNormal((4,)), flow_layers=1,
                         transformer=RationalQuadraticSpline(knots=4, interval=3.0))
    layers = [b.bijector if isinstance(b, Inverse) else b
              for b in from_flowjax(dist).bijector.layers]
    splines = [b for b in layers if type(b).__name__ == "SplineCoupling"]
    assert len(splines) == 1
    assert splines[0].parameterization == "flowjax" and splines[0].n_bins == 5


def test_asymmetric_spline_interval_is_a_shifted_symmetric_spline():
    from refflow.bijectors import Affine
    dist = coupling_flow(jr.key(0), base_dist=StandardNormal((4,)), flow_layers=1,
                         transformer=RationalQuadraticSpline(knots=4, interval=(-2.0, 3.0)))
    layers = [b.bijector if isinstance(b, Inverse) else b
              for b in from_flowjax(dist).bijector.layers]
    shifts = [b.params["shift"] for b in layers if isinstance(b, Affine)]
    assert len(shifts) == 2 and all(np.all(np.abs(v) == 0.5) for v in shifts)
    spline = next(b for b in layers if type(b).__name__ == "SplineCoupling")
    assert spline.parameterization == "flowjax" and spline._map.bound == 2.5


def test_triangular_spline_flow_layers_of_the_import():
    from refflow.bijectors import LeakyTanh, RationalQuadraticSpline as RQS
    from refflow.bijectors import TriangularAffine as RTriangularAffine
    dist = triangular_spline_flow(jr.key(0), base_dist=StandardNormal((3,)), flow_layers=1,
                                  tanh_max_val=2.5, invert=False)
    layers = from_flowjax(dist).bijector.layers
    # Scan([Chain([Sandwich(splines, LeakyTanh), TriangularAffine, Permute])])
    assert [type(b).__name__ for b in layers[:4]] == ["LeakyTanh", "RationalQuadraticSpline",
                                                      "Inverse", "TriangularAffine"]
    assert isinstance(layers[0], LeakyTanh) and layers[0].max_val == 2.5
    assert isinstance(layers[2].bijector, LeakyTanh) and isinstance(layers[1], RQS)
    assert isinstance(layers[3], RTriangularAffine)


def test_conditional_triangular_spline_flow_and_planar_options_are_refused():
    dist = triangular_spline_flow(jr.key(0), base_dist=StandardNormal((3,)), flow_layers=1,
                                  cond_dim=2)
    with pytest.raises(NotImplementedError, match="AdditiveCondition.*conditional shift"):
        from_flowjax(dist)
    dist = planar_flow(jr.key(0), base_dist=StandardNormal((3,)), flow_layers=1, cond_dim=2,
                       width_size=4, depth=1)
    with pytest.raises(ValueError, match="Planar: a conditional planar layer"):
        from_flowjax(dist)
    dist = planar_flow(jr.key(0), base_dist=StandardNormal((3,)), flow_layers=1,
                       negative_slope=0.1)
    with pytest.raises(ValueError, match="Planar: negative_slope=0.1"):
        from_flowjax(dist)


def test_planar_import_uses_flowjaxs_constraint():
    from refflow.bijectors import Planar as RPlanar
    dist = _perturb(planar_flow(jr.key(3), base_dist=StandardNormal((3,)), flow_layers=1), 9)
    layers = [b.bijector if isinstance(b, Inverse) else b
              for b in from_flowjax(dist).bijector.layers]
    layer = next(b for b in layers if isinstance(b, RPlanar))
    assert layer.constraint == "flowjax"
    planar = jax.tree_util.tree_map(lambda a: a[0] if eqx.is_array(a) else a,
                                    dist.bijection.bijection.bijection).bijections[0]
    theirs = planar.get_planar()
    np.testing.assert_allclose(layer.constrained()["u_hat"], np.asarray(theirs.get_act_scale()),
                               rtol=1e-13, atol=1e-15)


def test_not_a_flowjax_distribution():
    with pytest.raises(TypeError, match="from_flowjax"):
        from_flowjax(object())


#: directional derivatives of the same function by jax.grad and by refflow's pullbacks.
RTOL_GRAD = 1e-8


def _bijection_leaves(dist):
    """FlowJAX's trainable leaves of the bijection (the base's scale map, log(softplus), is not
    linear, so the base is left out of the directions)."""
    return eqx.partition(dist.bijection, eqx.is_inexact_array,
                         is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))


@pytest.mark.parametrize("kind, seed, cond, invert, dim", [
    c for c in CONFIGS if not (c[0] == "bnaf" and not c[3])])
def test_gradients_match_along_random_directions(kind, seed, cond, invert, dim):
    """``jax.grad`` of the mean log-prob along a random direction ``delta`` of the bijection's
    trainable leaves, against refflow's gradient dotted with ``import(theta + delta) -
    import(theta)`` (exact: every parameter map of the importer here is a copy, a row
    permutation, a mask product or a constant added to a bias)."""
    dist = _perturb(_build(kind, seed, cond, invert, dim), seed + 100)
    model = from_flowjax(dist)
    rng = np.random.default_rng(seed + 7)
    x = 1.5 * rng.normal(size=(20, dim))
    c = None if cond is None else rng.normal(size=(20, cond))
    params, static = _bijection_leaves(dist)

    def mean_log_prob(p):
        d = eqx.tree_at(lambda t: t.bijection, dist, eqx.combine(p, static))
        return jnp.mean(jax.vmap(d.log_prob)(*(jnp.asarray(a) for a in (x, c)
                                               if a is not None)))

    grads = jax.grad(mean_log_prob)(params)
    leaves, tree = jax.tree_util.tree_flatten(params)
    delta = [rng.normal(size=leaf.shape) for leaf in leaves]
    peer = sum(float(np.sum(np.asarray(g) * d))
               for g, d in zip(jax.tree_util.tree_leaves(grads), delta))
    moved_params = jax.tree_util.tree_unflatten(
        tree, [jnp.asarray(np.asarray(leaf) + d) for leaf, d in zip(leaves, delta)])
    moved = from_flowjax(eqx.tree_at(lambda t: t.bijection, dist,
                                     eqx.combine(moved_params, static)))
    _, ref = model.nll_and_grad(x, context=c)
    before, after = model.params, moved.params
    mine = sum(float(np.sum(-ref[k] * (after[k] - before[k]))) for k in ref)
    assert abs(peer) > 0
    assert abs(mine - peer) <= RTOL_GRAD * max(abs(peer), 1.0), (peer, mine)


# ------------------------------------------------ compare / assert_matches on FlowJAX models
#: thresholds of refflow.interop.compare: float64 closed forms (log-probs), and gradients of a
#: mean log-prob through ~1e2 operations per point.
RTOL_COMPARE_LP, RTOL_COMPARE_GRAD = 1e-10, 1e-8
# FlowJAX's log_prob of a non-inverted BNAF runs its bisection (tolerance ~1e-5): not compared
COMPARE_CONFIGS = [c for c in CONFIGS if not (c[0] == "bnaf" and not c[3])]


def _trainable_paths(dist):
    params, _ = eqx.partition(dist, eqx.is_inexact_array,
                              is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("kind, seed, cond, invert, dim", COMPARE_CONFIGS)
def test_compare_checks_every_trainable_leaf_by_jax_grad(kind, seed, cond, invert, dim):
    """``assert_matches`` on a FlowJAX distribution: log-probs to 1e-10 and, for every
    trainable leaf (the base's included), ``jax.grad`` of the mean log-prob against refflow's
    gradient carried back through the importer's parameter maps, to 1e-8."""
    from refflow.interop import assert_matches
    dist = _perturb(_build(kind, seed, cond, invert, dim), seed + 100)
    model = from_flowjax(dist)
    rng = np.random.default_rng(seed + 11)
    x = 1.5 * rng.normal(size=(16, dim))
    c = None if cond is None else rng.normal(size=(16, cond))
    report = assert_matches(dist, model, x, c, rtol_log_prob=RTOL_COMPARE_LP,
                            rtol_grad=RTOL_COMPARE_GRAD)
    assert report.peer == "flowjax"
    assert set(report.grad_rel) == _trainable_paths(dist)
    assert sum(np.linalg.norm(g) for g in report.grad_peer.values()) > 0
    # the base's trainable leaves are compared too (Normal / StudentT bases)
    if type(dist.base_dist).__name__ in ("Normal", "StudentT"):
        assert any(p.startswith(".base_dist") and np.linalg.norm(report.grad_peer[p]) > 0
                   for p in report.grad_rel)


@pytest.mark.parametrize("kind, cond", [("maf_rqs", 1), ("coupling_default", None),
                                        ("bnaf", 2), ("coupling", None)])
def test_compare_briefly_trained_models(kind, cond):
    """Trained for a few epochs by FlowJAX's own maximum-likelihood loop, then imported."""
    from flowjax.train import fit_to_data

    from refflow.interop import assert_matches
    dist = _build(kind, 3, cond, True, 3)
    rng = np.random.default_rng(5)
    x = 1.5 * rng.normal(size=(64, 3))
    x[:, 1] += 0.5 * x[:, 0] ** 2
    c = None if cond is None else rng.normal(size=(64, cond))
    dist, _ = fit_to_data(jr.key(1), dist, data=(x,) if c is None else (x, c), max_epochs=3,
                          batch_size=32, learning_rate=1e-2, return_best=False,
                          show_progress=False)
    report = assert_matches(dist, from_flowjax(dist), x[:16], None if c is None else c[:16],
                            rtol_log_prob=RTOL_COMPARE_LP, rtol_grad=RTOL_COMPARE_GRAD)
    assert set(report.grad_rel) == _trainable_paths(dist)


def test_compare_catches_a_planted_parameter_error_and_names_the_leaf():
    from refflow.interop import compare
    dist = _perturb(_build("maf_rqs", 4, 1, True, 3), 104)
    model = from_flowjax(dist)
    key = next(k for k in model.params if k.endswith("made.b0"))
    model.params[key] = model.params[key] + 1e-6 * np.arange(model.params[key].size)
    rng = np.random.default_rng(0)
    report = compare(dist, model, 1.5 * rng.normal(size=(8, 3)), rng.normal(size=(8, 1)))
    assert not report.ok and report.bad_params
    assert report.max_log_prob_rel > RTOL_COMPARE_LP
    assert "MISMATCH" in str(report) and "flowjax" in str(report)


def test_compare_refuses_a_model_of_another_structure():
    from refflow.interop import compare
    dist = _perturb(_build("maf_rqs", 4, 1, True, 3), 104)
    other = from_flowjax(_build("coupling_rqs", 1, None, False, 3))
    with pytest.raises(ValueError, match="compare: model has no parameter"):
        compare(dist, other, np.zeros((2, 3)), np.zeros((2, 1)))
