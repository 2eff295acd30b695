"""The fused fast paths (optimizer updates, MLP passes) against the kept reference passes.

Covered: the kernels of :mod:`refflow.kernels.fused` against their NumPy twins; ``Adam`` and
``SGD`` fused steps against ``_step_reference``; the ReLU MLP passes (``_dense_forward_relu``,
``_dense_vjp_relu``, with and without the work-array pool ``_Buffers``) against
``_dense_forward_reference`` / ``_dense_vjp_reference``; ReLU's fused value-and-derivative
against ``_relu_vd_reference``; the coupling layers' scatter; and whole RealNVP training steps.

Every fast path performs the reference's floating-point operations in the reference's order,
so the bound asserted is **bitwise equality** (``np.array_equal``; it treats ``-0.0 == 0.0``,
the only freedom taken: ``max(a, 0)`` may return either zero for ``a = -0.0``, which changes
no later value). Results are also checked in float32 (the passes stay float32).
"""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refflow.nn.activations as act_mod
import refflow.nn.mlp as mlp_mod
from refflow import AffineCoupling, AdditiveCoupling
from refflow.flows import RealNVP
from refflow.kernels import fast_paths, fused
from refflow.nn import MLP, get_activation
from refflow.optim import SGD, Adam

FLOATS = (np.float64, np.float32)
#: the fast paths of this file (refflow.kernels.PATHS)
SWITCHED = ("mlp", "optim", "coupling")


def _equal_trees(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _equal_trees(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _equal_trees(x, y)
    elif a is None:
        assert b is None
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ kernels
def _special(rng, shape, dtype):
    """Normal values with zeros, signed zeros and ties sprinkled in."""
    x = rng.normal(size=shape).astype(dtype)
    flat = x.reshape(-1)
    if flat.size:
        idx = rng.integers(0, flat.size, size=max(1, flat.size // 7))
        flat[idx[::2]] = 0.0
        flat[idx[1::2]] = -0.0
    return x


@settings(deadline=None)
@given(n=st.integers(0, 300), m=st.integers(1, 9), seed=st.integers(0, 2**32 - 1),
       f32=st.booleans())
def test_mlp_kernels_match_twins_bitwise(n, m, seed, f32):
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(seed)
    a, bias = _special(rng, (n, m), dtype), _special(rng, (m,), dtype)
    got, want = a.copy(), a.copy()
    fused.bias_relu(got, bias)
    fused.bias_relu_numpy(want, bias)
    np.testing.assert_array_equal(got, want)
    x, w = _special(rng, (n, 1), dtype), _special(rng, (m, 1), dtype)
    for relu in (True, False):
        got, want = np.empty((n, m), dtype), np.empty((n, m), dtype)
        fused.outer_bias_relu(x, w, bias, got, relu)
        fused.outer_bias_relu_numpy(x, w, bias, want, relu)
        np.testing.assert_array_equal(got, want)
        # and the reference expression of the layer: h @ w.T + b (one product per entry)
        ref = x @ w.T
        ref += bias
        np.testing.assert_array_equal(got, np.maximum(ref, 0) if relu else ref)
    flat = a.reshape(-1)
    hv, dv, hn, dn = (np.empty_like(flat) for _ in range(4))
    fused.relu_value_derivative(flat, hv, dv)
    fused.relu_value_derivative_numpy(flat, hn, dn)
    np.testing.assert_array_equal(hv, hn)
    np.testing.assert_array_equal(dv, dn)
    g, h = _special(rng, (n, m), dtype), _special(rng, (n, m), dtype)
    g1, g2 = g.copy(), g.copy()
    c1, c2 = np.empty(m, dtype), np.empty(m, dtype)
    fused.relu_mask_colsum(g1, h, c1)
    fused.relu_mask_colsum_numpy(g2, h, c2)
    np.testing.assert_array_equal(g1, g2)
    if m > 1 or n < 8:       # a single contiguous column NumPy sums pairwise (see mlp.py)
        np.testing.assert_array_equal(c1, c2)
    else:
        np.testing.assert_allclose(c1, c2, rtol=1e-5 if f32 else 1e-12, atol=0)
    assert c1.dtype == dtype


def test_relu_kernels_on_nan_inf_and_signed_zero():
    a = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, -1e-310])
    h, d = np.empty_like(a), np.empty_like(a)
    fused.relu_value_derivative(a, h, d)
    np.testing.assert_array_equal(h, np.maximum(a, 0))
    np.testing.assert_array_equal(d, (a > 0).astype(float))
    assert np.isnan(h[0]) and d[0] == 0.0


@settings(deadline=None)
@given(n=st.integers(0, 40), m=st.integers(0, 6), k=st.integers(0, 6),
       seed=st.integers(0, 2**32 - 1))
def test_assemble_columns_matches_fancy_indexing(n, m, k, seed):
    rng = np.random.default_rng(seed)
    dim = m + k
    perm = rng.permutation(dim)
    a, b = np.sort(perm[:m]), np.sort(perm[m:])
    part_a, part_b = rng.normal(size=(n, m)), rng.normal(size=(n, 2 * k))[:, ::2]  # a view
    got, want = np.full((n, dim), np.nan), np.full((n, dim), np.nan)
    fused.assemble_columns(got, a, part_a, b, part_b)
    fused.assemble_columns_numpy(want, a, part_a, b, part_b)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ optimizers
def _params(rng, shapes):
    return {f"p{i}": rng.normal(size=s) for i, s in enumerate(shapes)}


SHAPES = st.lists(st.sampled_from([(), (1,), (3,), (4, 5), (2, 3, 2), (0,), (17, 1)]),
                  min_size=1, max_size=4)


def _run_pair(make, shapes, seed, n_steps):
    """Two optimizers on equal parameters, fused and reference, fed the same gradients."""
    rng = np.random.default_rng(seed)
    init = _params(rng, shapes)
    grads = [{k: rng.normal(size=v.shape) for k, v in init.items()} for _ in range(n_steps)]
    results = []
    for fast in (True, False):
        with fast_paths(fast, paths=["optim"]):
            results.append(_run_steps(make, init, grads))
    _equal_trees(results[0], results[1])
    return results[0]


def _run_steps(make, init, grads):
    params = {k: v.copy() for k, v in init.items()}
    ids = {k: id(v) for k, v in params.items()}
    opt = make(params)
    states = {name: dict(getattr(opt, name)) for name in opt._state_names}
    for g in grads:
        opt.step(g)
    assert {k: id(v) for k, v in params.items()} == ids               # updated in place
    for name in opt._state_names:                                   # same state objects
        assert all(getattr(opt, name)[k] is states[name][k] for k in params)
    return params, opt.state_dict()


@settings(deadline=None)
@given(shapes=SHAPES, seed=st.integers(0, 2**32 - 1), wd=st.sampled_from([0.0, 0.05]),
       lr=st.sampled_from([1e-3, 0.3]), betas=st.sampled_from([(0.9, 0.999), (0.0, 0.5)]))
def test_adam_fused_is_bitwise_the_reference(shapes, seed, wd, lr, betas):
    _run_pair(lambda p: Adam(p, lr=lr, betas=betas, weight_decay=wd), shapes, seed,
              n_steps=4)


@settings(deadline=None)
@given(shapes=SHAPES, seed=st.integers(0, 2**32 - 1), wd=st.sampled_from([0.0, 0.05]),
       mom=st.sampled_from([(0.0, False), (0.9, False), (0.5, True)]))
def test_sgd_fused_is_bitwise_the_reference(shapes, seed, wd, mom):
    momentum, nesterov = mom
    _run_pair(lambda p: SGD(p, lr=0.1, momentum=momentum, nesterov=nesterov,
                                         weight_decay=wd), shapes, seed, n_steps=4)


def test_adam_kernel_matches_its_twin():
    rng = np.random.default_rng(3)
    p, g, m = rng.normal(size=(3, 50))
    v = np.abs(rng.normal(size=50))
    args = (0.9, 0.1, 0.999, 1.0 - 0.999, 0.01 / (1 - 0.9 ** 3), np.sqrt(1 - 0.999 ** 3), 1e-8,
            1.0 - 0.01 * 0.1)
    for use_decay in (True, False):
        outs1 = [np.empty(50) for _ in range(3)]
        outs2 = [np.empty(50) for _ in range(3)]
        assert fused.adam_update(p, g, m, v, *outs1, *args, use_decay)
        assert fused.adam_update_numpy(p, g, m, v, *outs2, *args, use_decay)
        _equal_trees(outs1, outs2)
    g[7] = np.inf
    with np.errstate(all="ignore"):          # plain-Python kernel mode: NumPy scalars warn
        assert not fused.adam_update(p, g, m, v, *outs1, *args, True)
        assert not fused.adam_update_numpy(p, g, m, v, *outs2, *args, True)
    b = rng.normal(size=50)
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
        o1, o2 = [np.empty(50) for _ in range(2)], [np.empty(50) for _ in range(2)]
        g[7] = 1.0
        assert fused.sgd_update(p, g, b, *o1, 0.1, 0.01, True, momentum, nesterov)
        assert fused.sgd_update_numpy(p, g, b, *o2, 0.1, 0.01, True, momentum, nesterov)
        _equal_trees(o1, o2)
        g[7] = np.nan
        with np.errstate(all="ignore"):
            assert not fused.sgd_update(p, g, b, *o1, 0.1, 0.01, True, momentum, nesterov)


def test_fused_step_all_or_nothing_and_odd_inputs():
    rng = np.random.default_rng(5)
    base = np.zeros((4, 6))
    params = {"a": rng.normal(size=(3, 3)), "b": base[:, ::2],   # "b" is not contiguous
              "c": rng.normal(size=())}
    opt = Adam(params, lr=0.1)
    opt.step({k: np.ones(np.shape(v)) for k, v in params.items()})
    snap = ({k: v.copy() for k, v in params.items()}, opt.state_dict())
    bad = [
        {"a": np.ones((3, 3)), "b": np.ones((4, 3)), "c": np.array(np.nan)},
        # finite, but g * g overflows the second moment of the last key, after "a" and "b"
        # were computed: they must not be written either
        {"a": np.ones((3, 3)), "b": np.ones((4, 3)), "c": 1e200},
    ]
    for g in bad:
        with pytest.raises(ValueError, match="Adam.step"):
            opt.step(g)
        _equal_trees(({k: v for k, v in params.items()}, opt.state_dict()), snap)
    assert not base[:, 1::2].any()               # the columns between "b"'s stay untouched
    # gradients of other dtypes, layouts and containers, and a gradient aliasing a parameter:
    # the fused step reads everything before writing anything
    g = {"a": params["a"], "b": np.asfortranarray(np.ones((4, 3), np.float32)),
         "c": [[1.5]][0][0]}
    twin = Adam({k: v.copy() for k, v in params.items()}, lr=0.1)
    twin.load_state_dict(opt.state_dict())
    g_twin = {k: np.array(v, dtype=np.float64, copy=True) for k, v in g.items()}
    opt.step(g)
    with fast_paths(False, paths=["optim"]):
        twin.step(g_twin)
    _equal_trees({k: v for k, v in params.items()}, {k: v for k, v in twin.params.items()})
    _equal_trees(opt.state_dict(), twin.state_dict())


def test_check_grads_copies_only_when_needed():
    params = {"w": np.zeros((2, 3))}
    opt = Adam(params)
    g64 = np.ones((2, 3))
    assert opt._check_grads({"w": g64}, "t")["w"] is g64
    for g in (np.ones((2, 3), np.float32), np.ones((3, 2)).T, [[1, 2, 3], [4, 5, 6]]):
        out = opt._check_grads({"w": g}, "t")["w"]
        assert out.dtype == np.float64 and out.flags.c_contiguous and out is not g


# ------------------------------------------------------------------------------ MLP passes
def _stack(rng, sizes, dtype):
    ws = [(rng.normal(size=(o, i)) / max(1.0, np.sqrt(i))).astype(dtype)
          for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(size=o).astype(dtype) for o in sizes[1:]]
    return ws, bs


@settings(deadline=None)
@given(n=st.integers(1, 70), sizes=st.lists(st.integers(0, 9), min_size=2, max_size=5),
       seed=st.integers(0, 2**32 - 1), f32=st.booleans(), pooled=st.booleans())
def test_relu_passes_are_bitwise_the_reference(n, sizes, seed, f32, pooled):
    sizes[-1] = max(sizes[-1], 1)
    sizes[1:-1] = [max(s, 1) for s in sizes[1:-1]]
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(seed)
    ws, bs = _stack(rng, sizes, dtype)
    h = rng.normal(size=(n, sizes[0])).astype(dtype)
    g = rng.normal(size=(n, sizes[-1])).astype(dtype)
    relu = get_activation("relu")
    buffers = mlp_mod._Buffers() if pooled else None
    out_ref, back_ref = mlp_mod._dense_vjp_reference(h, ws, bs, relu)
    out, back = mlp_mod._dense_vjp_relu(h, ws, bs, buffers)
    _equal_trees(out, out_ref)
    _equal_trees(mlp_mod._dense_forward_relu(h, ws, bs, buffers),
                 mlp_mod._dense_forward_reference(h, ws, bs, relu))
    _equal_trees(mlp_mod.dense_forward(h, ws, bs, relu), out_ref)
    g_copy = g.copy()
    want = back_ref(g)
    _equal_trees(back(g), want)
    _equal_trees(back(g), want)                       # a pullback may be called again
    np.testing.assert_array_equal(g, g_copy)          # g is not modified
    assert out.dtype == dtype and all(x.dtype == dtype for x in want[1] + want[2])


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu", "softplus", "gelu"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_mlp_public_passes_unchanged(activation, dtype):
    rng = np.random.default_rng(11)
    results = []
    for fast in (True, False):
        with fast_paths(fast, paths=["mlp"]):
            net = MLP(3, 4, hidden=(16, 1, 8), activation=activation, rng=0)
            h = rng.normal(size=(300, 3)).astype(dtype)
            out, pullback = net.vjp(h)
            results.append((net(h), out, pullback(np.ones_like(out))))
        rng = np.random.default_rng(11)
    _equal_trees(results[0], results[1])
    assert results[0][1].dtype == dtype


def test_relu_value_and_derivative_fast_is_the_reference():
    rng = np.random.default_rng(2)
    relu = get_activation("relu")
    cases = [_special(rng, (50, 7), np.float64), _special(rng, (9,), np.float32),
             np.array(-0.5), _special(rng, (6, 8), np.float64)[:, ::2],   # non-contiguous
             np.array([np.nan, np.inf, -np.inf, 0.0, -0.0])]
    for a in cases:
        keep = a.copy()
        h, d = relu.value_and_derivative(a)
        h_ref, d_ref = act_mod._relu_vd_reference(a)
        _equal_trees((h, d), (h_ref, d_ref))
        np.testing.assert_array_equal(a, keep)        # the input is not touched


@fast_paths(True, paths=["mlp"])                      # also in the plain-Python kernel mode
def test_pool_never_hands_out_a_live_residual():
    """Two passes alive at once, pulled back in either order and after more passes, equal the
    fresh results: a buffer is reused only when no residual, output or view holds it."""
    rng = np.random.default_rng(4)
    net = MLP(2, 3, hidden=(32, 32), rng=0)          # 32 x 300 x 8 bytes: pooled arrays
    h1, h2 = rng.normal(size=(2, 300, 2))
    g = rng.normal(size=(300, 3))

    def fresh(h):
        other = copy.deepcopy(net)                    # a copy starts with an empty pool
        out, pb = other.vjp(h)
        return out, pb(g)

    want1, want2 = fresh(h1), fresh(h2)
    out1, pb1 = net.vjp(h1)
    out2, pb2 = net.vjp(h2)
    for _ in range(3):                                # more passes, their pullbacks dropped
        net.vjp(h2)[1](g)
        net(h1)
    _equal_trees((out2, pb2(g)), want2)
    _equal_trees((out1, pb1(g)), want1)
    work = net._buffers
    held = [a for arrays in work._arrays.values() for a in arrays]
    assert held and len(held) <= work.MAX_PER_SHAPE * work.MAX_SHAPES
    del pb1, pb2
    n_before = len(held)
    del held
    for _ in range(4):
        net.vjp(h1)[1](g)
    assert sum(len(v) for v in work._arrays.values()) == n_before   # reused, not grown
    # an outside view of a pooled array keeps it out of circulation
    buf = work.get((300, 32), np.float64)
    view = buf[:5]
    del buf
    assert work.get((300, 32), np.float64).base is not view.base
    pickle.loads(pickle.dumps(net))                   # the pool pickles as an empty pool


# ------------------------------------------------------------------------------ coupling
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("make", [
    lambda: AffineCoupling(5, mask=[1, 0, 1, 0, 0], hidden=(16, 16), scale="softclip", rng=0),
    lambda: AffineCoupling(4, hidden=(8,), scale="sigmoid", scale_side="density",
                           context_dim=2, rng=1),
    lambda: AdditiveCoupling(3, mask=[0, 1, 0], hidden=(16, 16), activation="tanh", rng=2),
])
def test_coupling_passes_are_bitwise_the_reference(dtype, make):
    layer = make()
    rng = np.random.default_rng(8)
    v = rng.normal(size=(400, layer.dim)).astype(dtype)
    c = None if layer.context_dim is None else rng.normal(size=(400, layer.context_dim))
    bar = rng.normal(size=v.shape).astype(dtype)
    ld_bar = rng.normal(size=400).astype(dtype)
    results = []
    for fast in (True, False):
        args = (v,) if c is None else (v, c.astype(dtype))
        res = []
        with fast_paths(fast, paths=SWITCHED):
            for direction in ("forward", "inverse"):
                out, log_det, pullback = getattr(layer, f"{direction}_vjp")(*args)
                res.append((out, log_det, pullback(bar, ld_bar),
                            getattr(layer, direction)(*args)))
        results.append(res)
    _equal_trees(results[0], results[1])
    assert results[0][0][0].dtype == dtype


def test_realnvp_training_steps_are_bitwise_the_reference():
    x = np.random.default_rng(0).normal(size=(700, 2))
    results = []
    for fast in (True, False):
        with fast_paths(fast, paths=SWITCHED):
            flow = RealNVP(2, n_layers=3, hidden=(32, 32), rng=0)
            opt = Adam(flow.params, lr=1e-2)
            losses = []
            for _ in range(3):
                loss, grads = flow.nll_and_grad(x)
                opt.step(grads)
                losses.append(loss)
            results.append((losses, {k: v for k, v in flow.params.items()},
                            opt.state_dict(), flow.log_prob(x), flow.sample(5, rng=1)))
    _equal_trees(results[0], results[1])


def test_float32_mlp_kernels_compute_in_float32():
    """No float64 in the float32 specialisations of the MLP kernels (a float literal would
    promote the arithmetic silently; see DEVELOPERS.md, numba rules)."""
    from refflow.kernels import NUMBA_DISABLED
    if NUMBA_DISABLED:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    numba = pytest.importorskip("numba")
    if numba.config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1")
    f32 = np.float32
    a, g, h = (np.ones((4, 3), f32) for _ in range(3))
    x, w, bias, col = np.ones((4, 1), f32), np.ones((3, 1), f32), np.ones(3, f32), np.ones(3, f32)
    flat = np.ones(5, f32)
    calls = [(fused.bias_relu, (a, bias)), (fused.outer_bias_relu, (x, w, bias, a, True)),
             (fused.relu_value_derivative, (flat, flat.copy(), flat.copy())),
             (fused.relu_mask_colsum, (g, h, col)),
             (fused.assemble_columns, (a, np.array([0]), x, np.array([1, 2]), a[:, :2]))]
    seen = set()
    for kernel, args in calls:
        fresh = numba.njit(kernel.py_func)
        fresh(*args)
        (sig,) = fresh.signatures
        seen |= {str(t) for t in fresh.overloads[sig].type_annotation.typemap.values()}
    assert "float32" in seen
    assert not [t for t in seen if "float64" in t], sorted(seen)
