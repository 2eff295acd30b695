"""float32 specialisations of the fused "durkan" spline kernels (the block kernels, "fast", and
the scalar kernels ``rqs_durkan_*_scalar``, called "reference" below).

A float32 kernel must compute in float32: constants built from the dtype (DEVELOPERS.md, "Build
constants from the array dtype"), ``_exp_le0`` clamped where float32's ``exp`` has underflowed
(-150: below, ``2^n`` leaves float32's exponent range), and results as accurate as the
reference float32 kernels. The checks here run the helpers with float32 constants, as the
kernels hold them (numba returns a float32 tuple to Python as Python floats, i.e. float64), and
feed the kernels softmax inputs far below the row maximum.

- ``test_exp_le0_float32_below_the_clamp``: ``exp`` within ``EXP_ULPS`` of the exact value down
  to -150 and exactly 0 below (float32 constants).
- ``test_saturated_softmax_float32``: one unnormalised width / height 300 below its row's
  maximum (``exp`` of it underflows to 0 in float32); the fast kernels against the float64
  reference on the same float32 inputs, no worse than the reference float32 kernels.
- ``test_float32_kernels_hold_no_float64``: numba's inferred types of every fused kernel (fast
  and reference) and of ``_setup`` for float32 arrays: no float64 variable apart from the
  settings passed in as Python floats.
"""

import numpy as np
import pytest

from refflow.kernels import NUMBA_DISABLED
from refflow.kernels import splines as D

EPS32 = float(np.finfo(np.float32).eps)
#: ``_exp_le0``'s accuracy (tests/parity/test_spline_kernels_fast.py, measured worst 1.0 ulp).
EXP_ULPS = 1.0
#: Fast float32 kernels against the float64 result: the same order of error as the reference
#: float32 kernels (their ``exp`` / ``log1p`` round differently, 1-3 ulps), as in
#: ``test_float32_as_accurate_as_the_reference_float32``.
FAST_VS_REF_FACTOR = 4.0
FLOOR_ULPS = 16.0
SETTINGS = (3.0, 1e-3, 1e-3, 1e-3)   # bound, min_bin_width, min_bin_height, min_derivative
KERNELS = ("forward", "inverse", "forward_vjp", "inverse_vjp")

PLAIN = NUMBA_DISABLED
if not PLAIN:
    import numba
    PLAIN = bool(numba.config.DISABLE_JIT)


def _call(name, v, uw, uh, ud, bars=None, reference=False):
    kern = getattr(D, "rqs_durkan_" + name + ("_scalar" if reference else ""))
    if name.endswith("vjp"):
        outs = (np.empty_like(v), np.empty_like(uw), np.empty_like(uh), np.empty_like(ud))
        kern(v, uw, uh, ud, *SETTINGS, bars[0], bars[1], *outs)
    else:
        outs = (np.empty_like(v), np.empty_like(v))
        kern(v, uw, uh, ud, *SETTINGS, *outs)
    return outs


def _exp_loop():
    if PLAIN:
        def run(xs, one, ec):
            return np.array([D._exp_le0(x, one, ec) for x in xs], dtype=xs.dtype)
        return run

    @numba.njit
    def run(xs, one, ec):
        out = np.empty_like(xs)
        for i in range(xs.size):
            out[i] = D._exp_le0(xs[i], one, ec)
        return out
    return run


def test_exp_le0_float32_below_the_clamp():
    one = np.float32(1)
    ec = tuple(np.float32(c) for c in D._exp_consts(one))   # as the float32 kernels hold them
    x = np.concatenate([np.linspace(-150.0, -80.0, 2001), np.linspace(-80.0, 0.0, 2001),
                        [-150.5, -151.0, -200.0, -300.0, -999.0, -1000.0, -1e4, -1e30]])
    x = x.astype(np.float32)
    got = _exp_loop()(x, one, ec)
    assert got.dtype == np.float32
    exact = np.exp(x.astype(np.longdouble))
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.longdouble)
    ulps = np.abs(got.astype(np.longdouble) - exact) / spacing
    assert ulps.max() <= EXP_ULPS, float(x[np.argmax(ulps)])
    assert np.all(got[x <= -150.0] == 0.0)


def _saturated(rng, n, K):
    """float32 parameters with one width and one height 300 below the row's maximum."""
    uw, uh = (rng.standard_normal((n, K)).astype(np.float32) for _ in range(2))
    ud = rng.standard_normal((n, K - 1)).astype(np.float32)
    cols = rng.integers(0, K, size=(2, n))
    rows = np.arange(n)
    uw[rows, cols[0]] = uw.max(axis=1) - 300.0
    uh[rows, cols[1]] = uh.max(axis=1) - 300.0
    return uw, uh, ud


@pytest.mark.parametrize("name", KERNELS)
def test_saturated_softmax_float32(name):
    rng = np.random.default_rng(31)
    n, K = 3000 if not PLAIN else 200, 6
    p32 = _saturated(rng, n, K)
    x32 = rng.uniform(-3.3, 3.3, n).astype(np.float32)
    b32 = tuple(rng.standard_normal(n).astype(np.float32) for _ in range(2))
    p64 = tuple(a.astype(np.float64) for a in p32)
    b64 = tuple(a.astype(np.float64) for a in b32)
    vjp = name.endswith("vjp")
    exact = _call(name, x32.astype(np.float64), *p64, b64 if vjp else None, reference=True)
    fast = _call(name, x32, *p32, b32 if vjp else None)
    ref = _call(name, x32, *p32, b32 if vjp else None, reference=True)
    for f, r, e in zip(fast, ref, exact):
        assert f.dtype == np.float32 and np.isfinite(f).all()
        scale = max(1.0, float(np.max(np.abs(e))))
        err_fast = float(np.max(np.abs(f - e))) / scale
        err_ref = float(np.max(np.abs(r - e))) / scale
        assert err_fast <= FAST_VS_REF_FACTOR * err_ref + FLOOR_ULPS * EPS32, (err_fast, err_ref)


def _float64_variables(fn, *args):
    """Names of float64 variables in numba's typing of ``fn`` for ``args`` (a fresh, uncached
    compilation, so that the type annotations exist), the settings arguments excepted."""
    fresh = numba.njit(fn.py_func)
    fresh(*args)
    (sig,) = fresh.signatures
    typemap = fresh.overloads[sig].type_annotation.typemap
    settings = {"bound", "min_bin_width", "min_bin_height", "min_derivative"}
    names = set()
    for name, typ in typemap.items():
        base = name.split(".")[1] if name.startswith("arg.") else name.split(".")[0]
        if "float64" in str(typ) and not name.startswith("$") and base not in settings:
            names.add(name)
    return sorted(names)


def test_float32_kernels_hold_no_float64():
    if PLAIN:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    rng = np.random.default_rng(0)
    n, K = 70, 6
    x = rng.uniform(-3, 3, n).astype(np.float32)
    uw, uh, ud = (rng.standard_normal(s).astype(np.float32) for s in ((n, K), (n, K), (n, K - 1)))
    fresh = numba.njit(D._setup.py_func)
    fresh(uw, *SETTINGS)
    (sig,) = fresh.signatures
    returned = fresh.overloads[sig].signature.return_type
    assert "float64" not in str(returned), returned
    found = {}
    for name in KERNELS:
        for suffix in ("", "_scalar"):
            fn = getattr(D, f"rqs_durkan_{name}{suffix}")
            if name.endswith("vjp"):
                outs = (np.empty_like(x), np.empty_like(uw), np.empty_like(uh), np.empty_like(ud))
                args = (x, uw, uh, ud, *SETTINGS, x.copy(), x.copy(), *outs)
            else:
                args = (x, uw, uh, ud, *SETTINGS, np.empty_like(x), np.empty_like(x))
            bad = _float64_variables(fn, *args)
            if bad:
                found[name + suffix] = bad
    assert not found, found
