"""MADE's degree-sorted block products (``refflow/nn/_blocked.py``) against the dense
reference passes (``MADE._forward_reference`` / ``_vjp_reference``).

Tolerance. The blocked pass computes every output as the dense pass's sum restricted to the
terms whose mask is 1 (the skipped terms are exact zeros), in another summation order (GEMMs of
other shapes). Both are float64 dot products of at most ``max(width) <= 1,472`` terms here, so
they differ by round-off: we assert ``max|new - ref| <= 1e-12 * max|ref|`` per array (a
relative error against the array's scale, since single entries may cancel to ~0); measured
worst over the grid below: 1.4e-14 (weights N(0, 1), widths 256). float32: the same bound with
float32's epsilon, ``1e-4 * max|ref|`` (measured worst: see ``test_float32``). Masked weight
gradients are exactly 0 in both.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow.kernels import fast_paths
from refflow.nn import ACTIVATIONS, MADE
from refflow.nn import _blocked

RTOL64 = 1e-12
RTOL32 = 1e-4


def _close(new, ref, rtol=RTOL64, what=""):
    assert new.shape == ref.shape and new.dtype == ref.dtype, what
    scale = float(np.max(np.abs(ref), initial=0.0))
    err = float(np.max(np.abs(new.astype(np.float64) - ref), initial=0.0))
    if scale == 0.0:
        assert err == 0.0, what                     # exact zeros stay exact
    else:
        assert err <= rtol * scale, f"{what}: {err / scale:.3g} relative to max abs"


def _randomize(made, rng, unmasked=False):
    """Non-trivial parameters; ``unmasked`` also puts values at masked positions (every pass
    must still use ``W * M``)."""
    for k, v in made.params.items():
        a = rng.normal(0.0, 1.0, size=v.shape)
        if k.startswith("w") and not unmasked:
            a *= made.masks[int(k[1:])]
        made.params[k] = a


def _compare(made, rng, n=7, dtype=np.float64, rtol=RTOL64):
    cf = made.context_features
    x = rng.normal(size=(n, made.dim)).astype(dtype)
    c = rng.normal(size=(n, cf)).astype(dtype) if cf else None
    _close(made._forward(x, c), made._forward_reference(x, c), rtol, "forward")
    out, pb = made._vjp(x, c)
    ref, pb_ref = made._vjp_reference(x, c)
    _close(out, ref, rtol, "vjp output")
    g = rng.normal(size=out.shape).astype(dtype)
    res, res_ref = pb(g), pb_ref(g)
    assert len(res) == len(res_ref) == 3
    assert (res[2] is None) == (res_ref[2] is None) == (not cf)
    _close(res[0], res_ref[0], rtol, "x_bar")
    if cf:
        _close(res[2], res_ref[2], rtol, "context_bar")
    assert list(res[1]) == list(res_ref[1]) == list(made.params)
    for k in made.params:
        assert res[1][k].dtype == np.float64
        _close(res[1][k], res_ref[1][k], rtol, f"grad {k}")
        if k.startswith("w"):
            masked = made.masks[int(k[1:])] == 0
            assert np.all(res[1][k][masked] == 0.0)             # exactly, not to round-off
    return out, res


# ----------------------------------------------------------------------------- the grid
GRID = [(1, ()), (1, (5,)), (2, (8, 8)), (3, (5,)), (3, (16, 16, 16)), (10, (8, 8)),
        (10, (16, 16, 16)), (10, (256, 256)), (64, (256, 256)), (64, (64, 64, 64))]


@pytest.mark.parametrize("dim,hidden", GRID)
@pytest.mark.parametrize("n_params", [1, 2, 23])
def test_blocked_matches_reference(dim, hidden, n_params):
    rng = np.random.default_rng(dim * 100 + n_params)
    checked = 0
    big = dim * max(hidden, default=1) >= 2560
    for order in ("natural", "reverse", "random"):
        for rule in ("cyclic", "equal", "random"):
            for cf in (0, 3):
                if big and (rule, cf) not in (("cyclic", 0), ("random", 3)):
                    continue                        # keep the big nets to two variants each
                try:
                    made = MADE(dim, hidden, n_params, order=order, hidden_degrees=rule,
                                context_features=cf, rng=int(rng.integers(1 << 30)))
                except ValueError:                  # too narrow for a deterministic rule
                    continue
                _randomize(made, rng)
                _compare(made, rng)
                checked += 1
    assert checked >= 4


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation(activation):
    rng = np.random.default_rng(3)
    for cf in (0, 2):
        made = MADE(6, (20, 20), 3, order="random", activation=activation, context_features=cf,
                    rng=1)
        _randomize(made, rng)
        _compare(made, rng, n=11)


def test_explicit_degrees_with_repeated_and_missing_values():
    rng = np.random.default_rng(4)
    # degree 2 missing from the first layer, 4 repeated many times, units out of order
    d0 = np.array([4, 1, 4, 3, 4, 1, 4, 4, 3, 1])
    d1 = np.array([4, 4, 3, 1, 1, 4, 4, 4, 4])
    made = MADE(5, (10, 9), 2, order="random", hidden_degrees=[d0, d1], rng=0)
    _randomize(made, rng)
    _compare(made, rng)
    # with context: degree-0 units and no unit of degree 1
    c0 = np.array([0, 3, 0, 2, 3, 3, 0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4])
    made = MADE(5, (18, 18), 23, order="reverse", hidden_degrees=[c0, c0[::-1].copy()],
                context_features=2, rng=0)
    _randomize(made, rng)
    _compare(made, rng)


def test_masked_positions_of_the_stored_weights_are_ignored():
    """Parameters with values at masked positions (set by hand): both passes use W * M."""
    rng = np.random.default_rng(5)
    made = MADE(10, (32, 32), 2, order="random", context_features=1, rng=0)
    _randomize(made, rng, unmasked=True)
    _compare(made, rng)


def test_float32():
    rng = np.random.default_rng(6)
    for order in ("natural", "random"):
        made = MADE(64, (256, 256), 2, order=order, context_features=2, rng=0)
        _randomize(made, rng)
        out, res = _compare(made, rng, n=9, dtype=np.float32, rtol=RTOL32)
        assert out.dtype == np.float32 and res[0].dtype == np.float32
        assert res[2].dtype == np.float32
        assert all(g.dtype == np.float64 for g in res[1].values())


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_row(n):
    rng = np.random.default_rng(7)
    for cf in (0, 2):
        made = MADE(10, (16, 16), 2, order="random", context_features=cf, rng=1)
        _randomize(made, rng)
        out, res = _compare(made, rng, n=n)
        assert out.shape == (n, 10, 2) and res[0].shape == (n, 10)
        if n == 0:
            assert all(not np.any(g) for k, g in res[1].items())


def test_public_call_and_vjp_match_the_reference():
    rng = np.random.default_rng(8)
    made = MADE(7, (16, 12), 3, order="random", hidden_degrees="random", context_features=2,
                rng=2)
    _randomize(made, rng)
    x, c = rng.normal(size=(5, 7)), rng.normal(size=2)         # a shared context row
    cc = np.broadcast_to(c, (5, 2)).copy()
    _close(made(x, c), made._forward_reference(x, cc))
    _close(made(x[0], c), made._forward_reference(x[:1], cc[:1])[0])
    out, pb = made.vjp(x, c)
    ref, pb_ref = made._vjp_reference(x, cc)
    _close(out, ref)
    g = rng.normal(size=out.shape)
    x_bar, grads, c_bar = pb(g)
    rx, rg, rc = pb_ref(g)
    _close(x_bar, rx)
    _close(c_bar, rc.sum(axis=0))
    for k in grads:
        _close(grads[k], rg[k])


def test_prepared_weights():
    """``_weights`` prepared once serves several passes (bit-identical to a fresh pass) and
    unpacks to the dense ``(masked weights, biases)`` dicts that overriding subclasses use;
    with the fast paths off the same prepared weights run the dense reference pass."""
    rng = np.random.default_rng(9)
    made = MADE(6, (12, 12), 2, order="random", context_features=1, rng=3)
    _randomize(made, rng, unmasked=True)
    x, c = rng.normal(size=(4, 6)), rng.normal(size=(4, 1))
    prep = made._weights(np.float64)
    a = made._forward(x, c, prep)
    np.testing.assert_array_equal(a, made._forward(x, c))
    np.testing.assert_array_equal(a, made._forward(x, c, prep))
    ws, bs = prep
    assert sorted(ws) == ["w0", "w1", "w2"] and sorted(bs) == ["b0", "b1", "b2"]
    for k, m in zip(["w0", "w1", "w2"], made.masks):
        np.testing.assert_array_equal(ws[k], made.params[k] * m)
    with fast_paths(False, paths=["made"]):
        np.testing.assert_array_equal(made._forward(x, c, prep), made._forward_reference(x, c))
    _close(a, made._forward_reference(x, c))
    # weights prepared for another dtype: the pass runs in the input's dtype
    x32, c32 = x.astype(np.float32), c.astype(np.float32)
    _close(made._forward(x32, c32, prep), made._forward_reference(x32, c32), RTOL32)


# ------------------------------------------------------------------ the plan's structure
@pytest.mark.parametrize("dim,hidden,n_params,order,cf", [
    (64, (256, 256), 2, "natural", 0), (64, (256, 256), 23, "reverse", 0),
    (20, (50, 40, 30), 3, "random", 2), (5, (4,), 1, "natural", 0), (1, (3,), 2, "natural", 1)])
def test_blocks_cover_every_unmasked_weight(dim, hidden, n_params, order, cf):
    """In sorted order every 1 of a mask lies inside its group's prefix (forward and weight
    gradient) and inside its input group's range of outputs (input cotangent): nothing the
    dense pass multiplies by a nonzero weight is skipped."""
    made = MADE(dim, hidden, n_params, order=order, hidden_degrees="random",
                context_features=cf, rng=0)
    plan = made._plan()
    masked = dense = 0
    for lp, m in zip(plan.layers, made.masks):
        ms = m[lp.out_perm][:, lp.in_inv.argsort()]
        np.testing.assert_array_equal(ms, lp.mask)
        for o0, o1, p in lp.groups:
            assert not ms[o0:o1, p:].any()
        covered = 0
        for i0, i1, lo, hi in lp.in_groups:
            assert not ms[:lo, i0:i1].any() and not ms[hi:, i0:i1].any()
            covered += i1 - i0
        assert covered == lp.n_in
        assert sum(o1 - o0 for o0, o1, _ in lp.groups) == lp.n_out
        masked += lp.masked_macs
        dense += m.size
    assert plan.macs() == (masked, dense)
    assert masked >= sum(int(m.sum()) for m in made.masks)


def test_wide_layers_skip_masked_zeros():
    """The MAF benchmark's MADE does about 62% of the dense multiply-adds (the masks hold
    51%)."""
    made = MADE(64, (256, 256), 2, rng=0)
    masked, dense = made._plan().macs()
    assert dense == 64 * 256 + 256 * 256 + 256 * 128
    assert masked <= 0.65 * dense


# ----------------------------------------------------------------- chunks and hypothesis
@pytest.mark.parametrize("dim,hidden,n_params,cf", [(64, (256, 256), 2, 0),
                                                    (64, (256, 256), 23, 3),
                                                    (4, (16, 16), 2, 3), (10, (9,), 1, 0)])
def test_row_chunks_above_600_rows_are_bit_identical(dim, hidden, n_params, cf):
    """Row-chunking changes only the GEMMs' row count; above 600 rows OpenBLAS stays on one
    kernel (DEVELOPERS.md "chunking"), so chunks equal one pass bit for bit."""
    rng = np.random.default_rng(10)
    made = MADE(dim, hidden, n_params, order="random", context_features=cf, rng=1)
    _randomize(made, rng)
    n = 1900
    x = rng.normal(size=(n, dim))
    c = rng.normal(size=(n, cf)) if cf else None
    whole = made._forward(x, c)
    for a, b in ((0, 601), (601, 1250), (1250, n)):
        part = made._forward(x[a:b], None if c is None else c[a:b])
        np.testing.assert_array_equal(part, whole[a:b])


@pytest.mark.parametrize("cf", [0, 2])
def test_forward_row_tiles_are_bit_identical_to_one_pass(cf, monkeypatch):
    """With ``TILE_ROWS`` set (off by default, see _blocked), ``_forward`` runs a big batch in
    balanced tiles of >= TILE_ROWS (> 600) rows: bit for bit the untiled blocked pass, and the
    reference to round-off."""
    monkeypatch.setattr(_blocked, "TILE_ROWS", 768)
    rng = np.random.default_rng(12)
    made = MADE(16, (64, 64), 23, order="random", context_features=cf, rng=1)
    _randomize(made, rng)
    n = 4 * _blocked.TILE_ROWS + 5
    x = rng.normal(size=(n, 16))
    c = rng.normal(size=(n, cf)) if cf else None
    tiled = made._forward(x, c)
    monkeypatch.setattr(_blocked, "TILE_ROWS", None)
    np.testing.assert_array_equal(tiled, made._forward(x, c))
    _close(tiled, made._forward_reference(x, c))


@settings(deadline=None)
@given(dim=st.integers(1, 12), widths=st.lists(st.integers(1, 40), max_size=3),
       n_params=st.integers(1, 4), cf=st.integers(0, 2), seed=st.integers(0, 2**31),
       n=st.integers(0, 9), order=st.sampled_from(["natural", "reverse", "random"]),
       activation=st.sampled_from(sorted(ACTIVATIONS)))
def test_random_networks_match_the_reference(dim, widths, n_params, cf, seed, n, order,
                                             activation):
    rng = np.random.default_rng(seed)
    made = MADE(dim, tuple(widths), n_params, order=order, hidden_degrees="random",
                activation=activation, context_features=cf, rng=seed)
    _randomize(made, rng, unmasked=bool(seed % 2))
    _compare(made, rng, n=n)


def test_group_count_setting_changes_blocks_not_results(monkeypatch):
    outs = []
    for g in (1, 2, 3, 4, 6, 8):
        monkeypatch.setattr(_blocked, "GROUPS", g)
        made = MADE(16, (64, 64), 2, order="random", context_features=1, rng=0)
        assert len(made._plan().layers[1].groups) == min(g, 4)     # 64 units, >= 16 a group
        rng = np.random.default_rng(11)                             # the same x every time
        _randomize(made, rng)
        out, res = _compare(made, rng)
        outs.append(out)
    for o in outs[1:]:
        _close(o, outs[0])
