"""Helpers shared by the test modules: parameter randomisation, relative errors, and a spline
written from the papers.

``randomize`` draws every parameter of a layer (or a ``params`` mapping) afresh, so that no
test runs at an initialisation that hides a bug (zeroed last layers make many maps the
identity). ``rel`` / ``rel_rows`` are the oracle's error measure for values and log-dets,
``|a - b| / max(1, |b|)`` (DEVELOPERS.md, "Tolerances"); a NaN anywhere makes them NaN, which no
``<=`` bound accepts.

``paper_knots``, ``paper_rqs`` and ``paper_rqs_inverse`` compute a rational-quadratic spline
from the published formulas in plain NumPy, one element at a time, sharing no code with
``refflow`` (no kernel, no parameter map): the expected values of the spline tests. The inverse
is found by bisection on the forward formula, not by the quadratic root the kernels use.
"""

import importlib
import math
import os
import sys

import numpy as np
from scipy.special import softmax

__all__ = ["randomize", "rel", "rel_rows", "made_two_orders_bound", "joined_vjp",
           "torch_adam_steps", "bench_module", "paper_knots", "paper_rqs", "paper_rqs_inverse"]


def randomize(target, rng, scale=0.3, *, shift=False):
    """Set every parameter of ``target`` to ``N(0, scale^2)`` draws (``shift``: add them instead).

    ``target`` is a layer, a flow (anything with ``.params``) or a ``params`` mapping itself;
    parameters are drawn in the mapping's order from ``rng`` (a ``numpy.random.Generator``).
    Returns ``target``.
    """
    params = target.params if hasattr(target, "params") else target
    for key, value in params.items():
        draw = rng.normal(0.0, scale, size=np.shape(value))
        params[key] = value + draw if shift else draw
    return target


def _rel_array(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.maximum(1.0, np.abs(b))


def rel(a, b):
    """``max |a - b| / max(1, |b|)`` over all elements (0 for empty arrays)."""
    return float(np.max(_rel_array(a, b), initial=0.0))


def rel_rows(a, b):
    """Per-row ``max_j |a - b| / max(1, |b|)`` of two ``(n, ...)`` arrays, shape ``(n,)``."""
    err = _rel_array(a, b)
    return err.reshape(err.shape[0], -1).max(axis=1, initial=0.0)


# ------------------------------------------------------------------- MADE's summation orders
#: The activations' largest slope (gelu's 1.129; relu, tanh, elu and softplus have 1).
_ACTIVATION_LIPSCHITZ = 1.13


def made_two_orders_bound(made, x, context=None):
    """``(out, d_out)``: a ``MADE``'s outputs at ``x`` (``(n, dim, n_params)``, float64) and a
    bound on how far two evaluations of them can differ when only the order in which each dot
    product is summed differs (MAF's incremental sampler sums degree blocks separately, the
    density pass whole rows).

    Each ``sum_j w_j h_j + b`` of ``m`` terms is within ``gamma_m (sum_j |w_j h_j| + |b|)`` of
    the exact sum (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, eq. 3.5,
    ``gamma_m = m eps / (1 - m eps)``), so two orders differ by at most twice that; a difference
    ``dh`` already in a layer's input adds ``|W| dh``, and an activation multiplies it by at most
    its largest slope. First order in eps.
    """
    from refflow.nn import get_activation
    eps = np.finfo(np.float64).eps
    h = np.asarray(x, dtype=np.float64)
    if context is not None:
        h = np.concatenate([h, np.asarray(context, dtype=np.float64)], axis=1)
    dh = np.zeros_like(h)
    act = get_activation(made.activation)
    last = len(made.masks) - 1
    for k, mask in enumerate(made.masks):
        w = made.params[f"w{k}"] * mask
        b = made.params[f"b{k}"]
        m = w.shape[1] + 1
        gamma = m * eps / (1 - m * eps)
        a = h @ w.T + b
        da = 2 * gamma * (np.abs(h) @ np.abs(w).T + np.abs(b)) + dh @ np.abs(w).T
        if k < last:
            h, dh = act(a), _ACTIVATION_LIPSCHITZ * da
    shape = (h.shape[0], made.dim, made.n_params)
    return a.reshape(shape), da.reshape(shape)


# ------------------------------------------------------------------- splines from the papers
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def bench_module(name):
    """A module of ``benchmarks/`` (imported with that folder first on ``sys.path``)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module(name)


def joined_vjp(net, dim):
    """``vjp(xc)`` of a conditional network over one array ``[x, context]`` (its first ``dim``
    columns are ``x``), for ``assert_vjp`` / ``check_vjp``, which take a single input."""
    def vjp(xc):
        out, pullback = net.vjp(xc[:, :dim], xc[:, dim:])

        def joined(out_bar):
            x_bar, grads, c_bar = pullback(out_bar)
            return np.concatenate([x_bar, c_bar], axis=1), grads

        return out, joined
    return vjp


def assert_refused(importer, model, *words):
    """``importer(model)`` raises ``ValueError`` whose message contains every one of
    ``words`` (the refused class, option or reason)."""
    import pytest
    with pytest.raises(ValueError) as info:
        importer(model)
    for word in words:
        assert word in str(info.value)


def scaled_torch_model(factory, seed, scale=1.5):
    """``factory()`` built after ``torch.manual_seed(seed)``, every parameter multiplied by
    ``scale`` in place: larger than the peer's initialisation, so that its maps are far from
    the identity. torch is imported here only."""
    import torch
    torch.manual_seed(seed)
    model = factory()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def torch_adam_steps(flow, x, c, steps=5):
    """A few Adam steps (lr 1e-2) on a zuko flow's NLL in torch, float32 (zuko's default), in
    place: trained weights rather than the initialisation. torch is imported here only."""
    import torch
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    xt = torch.as_tensor(x, dtype=torch.float32)
    ct = None if c is None else torch.as_tensor(c, dtype=torch.float32)
    for _ in range(steps):
        opt.zero_grad()
        (-flow(ct).log_prob(xt).mean()).backward()
        opt.step()


def _softplus(u):
    return np.log1p(np.exp(-np.abs(u))) + np.maximum(u, 0.0)


def paper_knots(name, uw, uh, ud, bound=None):
    """Knots ``(xk, yk, dk)`` (each ``K + 1``) of one element's unconstrained parameters, with
    each library's default settings, written from its paper / source:

    - ``"durkan"`` (Durkan et al. 2019, sec. 3.1 and app. A.2; nflows): widths
      ``w = m + (1 - K m) softmax(u_w)`` as fractions of ``2B``, knots ``-B + 2B cumsum(w)`` with
      the ends at ``±B``, inner derivatives ``m + softplus(u_d)``, boundary derivatives 1;
      ``B = 3``, ``m = 1e-3``.
    - ``"zuko"`` (zuko 1.6 ``MonotonicRQSTransform``): ``w = softmax(u / (1 + |2u / ln s|))``,
      knots ``B (2 cumsum(w) - 1)``, inner derivatives ``exp(u / (1 + |u / ln s|))``, boundary 1;
      ``B = 5``, ``s = 1e-3``.
    - ``"distrax"`` (distrax ``RationalQuadraticSpline``): ``w = softmax(u)(2B - K m) + m``
      (absolute), knots ``-B + cumsum(w)``, all ``K + 1`` derivatives
      ``softplus(u_d + ln(e^{1 - m} - 1)) + m``; ``m = 1e-4``, ``B`` = 3 unless given.
    """
    uw, uh, ud = (np.asarray(a, dtype=np.float64) for a in (uw, uh, ud))
    K = uw.shape[0]
    if name == "durkan":
        B, m = 3.0 if bound is None else bound, 1e-3

        def knots(u):
            w = m + (1.0 - K * m) * softmax(u)
            return np.concatenate([[-B], -B + 2.0 * B * np.cumsum(w)[:-1], [B]])

        dk = np.concatenate([[1.0], m + _softplus(ud), [1.0]])
    elif name == "zuko":
        B, log_s = 5.0 if bound is None else bound, math.log(1e-3)

        def knots(u):
            w = softmax(u / (1.0 + np.abs(2.0 * u / log_s)))
            return np.concatenate([[-B], B * (2.0 * np.cumsum(w)[:-1] - 1.0), [B]])

        dk = np.concatenate([[1.0], np.exp(ud / (1.0 + np.abs(ud / log_s))), [1.0]])
    elif name == "distrax":
        B, m = 3.0 if bound is None else bound, 1e-4

        def knots(u):
            w = softmax(u) * (2.0 * B - K * m) + m
            return np.concatenate([[-B], -B + np.cumsum(w)[:-1], [B]])

        dk = _softplus(ud + math.log(math.expm1(1.0 - m))) + m
    else:
        raise ValueError(f"paper_knots: unknown map {name!r}")
    return knots(uw), knots(uh), dk


def paper_rqs(x, xk, yk, dk):
    """``(y, log dy/dx)`` of the rational-quadratic spline (Gregory & Delbourgo 1982; Durkan et
    al. 2019, eq. 4 and app. A) at the scalars ``x``, one knot set; linear tails through the end
    knots with the boundary derivatives as slopes.

    In bin ``k``: ``xi = (x - x_k) / w``, ``s = h / w``,
    ``y = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2 s) xi (1 - xi))``,
    ``dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (...) xi (1 - xi))^2``.
    """
    x = np.asarray(x, dtype=np.float64)
    y, log_det = np.empty_like(x), np.empty_like(x)
    for i, v in enumerate(x.flat):
        if v < xk[0] or v > xk[-1]:
            end = 0 if v < xk[0] else -1
            y.flat[i] = yk[end] + dk[end] * (v - xk[end])
            log_det.flat[i] = math.log(dk[end])
            continue
        k = min(int(np.searchsorted(xk, v, side="right")) - 1, len(xk) - 2)
        w, h = xk[k + 1] - xk[k], yk[k + 1] - yk[k]
        s, xi = h / w, (v - xk[k]) / w
        t = xi * (1.0 - xi)
        den = s + (dk[k + 1] + dk[k] - 2.0 * s) * t
        y.flat[i] = yk[k] + h * (s * xi * xi + dk[k] * t) / den
        num = s * s * (dk[k + 1] * xi * xi + 2.0 * s * t + dk[k] * (1.0 - xi) ** 2)
        log_det.flat[i] = math.log(num) - 2.0 * math.log(den)
    return y, log_det


def paper_rqs_inverse(y, xk, yk, dk):
    """``(x, log dx/dy)`` of the spline's inverse: bisection on :func:`paper_rqs` inside the bin
    (to adjacent floats), linear tails inverted directly."""
    y = np.asarray(y, dtype=np.float64)
    x, log_det = np.empty_like(y), np.empty_like(y)
    for i, v in enumerate(y.flat):
        if v < yk[0] or v > yk[-1]:
            end = 0 if v < yk[0] else -1
            x.flat[i] = xk[end] + (v - yk[end]) / dk[end]
        else:
            k = min(int(np.searchsorted(yk, v, side="right")) - 1, len(yk) - 2)
            lo, hi = xk[k], xk[k + 1]
            while np.nextafter(lo, hi) < hi:
                mid = 0.5 * (lo + hi)
                if mid <= lo or mid >= hi:
                    break
                if paper_rqs(mid, xk, yk, dk)[0] < v:
                    lo = mid
                else:
                    hi = mid
            x_lo, x_hi = paper_rqs(lo, xk, yk, dk)[0], paper_rqs(hi, xk, yk, dk)[0]
            x.flat[i] = lo if abs(x_lo - v) <= abs(x_hi - v) else hi
        log_det.flat[i] = -paper_rqs(x.flat[i], xk, yk, dk)[1]
    return x, log_det
