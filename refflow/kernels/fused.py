r"""Fused elementwise kernels for the optimizers, the MLP passes and the coupling scatter.

Each kernel does in one pass over memory what the reference NumPy code does with several
temporaries, with the *same floating-point operations in the same order*, so its float64 (and
float32) results are bitwise those of the reference (``tests/test_fused_paths.py`` checks it
against the reference code paths, which ``refflow.kernels.fast_paths(False)`` selects, and
against the ``*_numpy`` twins below).

=========================  ========================================================================
``adam_update``            ``(p, g, m, v, p_out, m_out, v_out, b1, c1, b2, c2, step_size,
                           bias2_sqrt, eps, decay, use_decay) -> all finite``, 1-D float64:
                           ``m' = b1 m + c1 g``, ``v' = b2 v + c2 (g g)``,
                           ``p' = p_d - step_size (m' / (sqrt(v') / bias2_sqrt + eps))`` with
                           ``p_d = p decay`` when ``use_decay`` else ``p`` (torch's AdamW order)
``sgd_update``             ``(p, g, b, p_out, b_out, lr, weight_decay, use_decay, momentum,
                           nesterov) -> all finite``: ``d = g + wd p``, ``b' = mu b + d``,
                           ``d = d + mu b'`` (Nesterov) or ``b'``, ``p' = p - lr d``
``bias_relu``              ``(a, bias)``, in place: ``a <- max(a + bias, 0)`` (rows ``(n, m)``)
``outer_bias_relu``        ``(x, w, bias, out, relu)``: ``out = x[:, 0] w[:, 0]^T + bias``, then ReLU
                           when ``relu``: a layer with one input as an outer product (exact: one
                           product per entry, as the matrix product computes it)
``relu_value_derivative``  ``(a, h, d)``, 1-D: ``h = max(a, 0)``, ``d = 1 if a > 0 else 0``
``relu_mask_colsum``       ``(g, h, colsum)``: ``g <- g * (1 if h > 0 else 0)`` in place and
                           ``colsum = sum_n g`` (rows added in order, as ``g.sum(axis=0)``)
``assemble_columns``       ``(out, a, part_a, b, part_b)``: ``out[:, a] = part_a``,
                           ``out[:, b] = part_b`` (the coupling layers' scatter; copies only)
=========================  ========================================================================

``max(a, 0)`` is NumPy's ``maximum``: ``a`` unless ``a < 0`` (so NaN propagates). For a ReLU
layer ``h = max(a, 0) > 0`` exactly when ``a > 0``, so the derivative mask can be read off the
layer's output ``h`` and need not be stored.

Kernels take arrays and scalars of one float dtype, build their constants from it and never
allocate (the caller passes the outputs).
"""

import math

import numpy as np

from . import njit

__all__ = ["adam_update", "sgd_update", "bias_relu", "outer_bias_relu", "relu_value_derivative",
           "relu_mask_colsum", "assemble_columns", "adam_update_numpy", "sgd_update_numpy", "bias_relu_numpy",
           "outer_bias_relu_numpy", "relu_value_derivative_numpy", "relu_mask_colsum_numpy",
           "assemble_columns_numpy"]


# ------------------------------------------------------------------------------ optimizers
@njit
def adam_update(p, g, m, v, p_out, m_out, v_out, b1, c1, b2, c2, step_size, bias2_sqrt, eps,
                decay, use_decay):
    # np.true_divide, not "/": numba's "/" checks for division by zero (Python semantics),
    # which stops the loop from vectorising; true_divide is the same IEEE division.
    bad = 0
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * (gi * gi)
        denom = np.true_divide(math.sqrt(vi), bias2_sqrt) + eps
        pi = p[i] * decay if use_decay else p[i]
        pi = pi - step_size * np.true_divide(mi, denom)
        m_out[i] = mi
        v_out[i] = vi
        p_out[i] = pi
        # x - x is 0 for finite x and NaN for inf/NaN: one test for all three values (an
        # integer "or", which vectorises, unlike a float sum or a short-circuit "and")
        bad |= not ((mi - mi) + (vi - vi) + (pi - pi) == 0.0)
    return bad == 0


@njit
def sgd_update(p, g, b, p_out, b_out, lr, weight_decay, use_decay, momentum, nesterov):
    bad = 0
    for i in range(p.shape[0]):
        d = g[i] + weight_decay * p[i] if use_decay else g[i]
        bi = b[i]
        if momentum != 0.0:
            bi = momentum * bi + d
            d = d + momentum * bi if nesterov else bi
        pi = p[i] - lr * d
        b_out[i] = bi
        p_out[i] = pi
        bad |= not ((bi - bi) + (pi - pi) == 0.0)
    return bad == 0


# ------------------------------------------------------------------------------------- MLP
@njit
def bias_relu(a, bias):
    zero = a.dtype.type(0)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            s = a[i, j] + bias[j]
            a[i, j] = zero if s < zero else s


@njit
def outer_bias_relu(x, w, bias, out, relu):
    zero = out.dtype.type(0)
    for i in range(out.shape[0]):
        xi = x[i, 0]
        for j in range(out.shape[1]):
            s = xi * w[j, 0] + bias[j]
            out[i, j] = zero if (relu and s < zero) else s


@njit
def relu_value_derivative(a, h, d):
    zero = a.dtype.type(0)
    one = a.dtype.type(1)
    for i in range(a.shape[0]):
        s = a[i]
        h[i] = zero if s < zero else s
        d[i] = one if s > zero else zero


@njit
def relu_mask_colsum(g, h, colsum):
    zero = g.dtype.type(0)
    one = g.dtype.type(1)
    for j in range(g.shape[1]):
        colsum[j] = zero
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            s = g[i, j] * (one if h[i, j] > zero else zero)
            g[i, j] = s
            colsum[j] += s


@njit
def assemble_columns(out, a, part_a, b, part_b):
    for i in range(out.shape[0]):
        for j in range(a.shape[0]):
            out[i, a[j]] = part_a[i, j]
        for j in range(b.shape[0]):
            out[i, b[j]] = part_b[i, j]


# ------------------------------------------------------------------------- NumPy twins
def adam_update_numpy(p, g, m, v, p_out, m_out, v_out, b1, c1, b2, c2, step_size, bias2_sqrt,
                      eps, decay, use_decay):
    """Vectorised twin of :func:`adam_update`."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        m_out[...] = b1 * m + c1 * g
        v_out[...] = b2 * v + c2 * (g * g)
        denom = np.sqrt(v_out) / bias2_sqrt + eps
        base = p * decay if use_decay else p
        p_out[...] = base - step_size * (m_out / denom)
    return bool(np.isfinite(m_out).all() and np.isfinite(v_out).all()
                and np.isfinite(p_out).all())


def sgd_update_numpy(p, g, b, p_out, b_out, lr, weight_decay, use_decay, momentum, nesterov):
    """Vectorised twin of :func:`sgd_update`."""
    with np.errstate(over="ignore", invalid="ignore"):
        d = g + weight_decay * p if use_decay else g
        if momentum != 0.0:
            b_out[...] = momentum * b + d
            d = d + momentum * b_out if nesterov else b_out
        else:
            b_out[...] = b
        p_out[...] = p - lr * d
    return bool(np.isfinite(b_out).all() and np.isfinite(p_out).all())


def bias_relu_numpy(a, bias):
    """Vectorised twin of :func:`bias_relu`."""
    a += bias
    np.maximum(a, 0, out=a)


def outer_bias_relu_numpy(x, w, bias, out, relu):
    """Vectorised twin of :func:`outer_bias_relu`."""
    np.multiply(x[:, :1], w[:, 0], out=out)
    out += bias
    if relu:
        np.maximum(out, 0, out=out)


def relu_value_derivative_numpy(a, h, d):
    """Vectorised twin of :func:`relu_value_derivative`."""
    np.maximum(a, 0, out=h)
    d[...] = a > 0


def relu_mask_colsum_numpy(g, h, colsum):
    """Vectorised twin of :func:`relu_mask_colsum`."""
    g *= h > 0
    colsum[...] = g.sum(axis=0)


def assemble_columns_numpy(out, a, part_a, b, part_b):
    """Vectorised twin of :func:`assemble_columns`."""
    out[:, a] = part_a
    out[:, b] = part_b
