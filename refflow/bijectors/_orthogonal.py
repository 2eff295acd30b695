"""Permutations and Householder reflections: the orthogonal pieces shared by
:mod:`refflow.bijectors.linear` (``Permute``, ``LULinear``, ``Householder``) and
:mod:`refflow.bijectors.planar` (``Sylvester``'s ``Q``).

A reflection ``H = I - 2 w w^T / s``, ``s = w^T w``, maps a row ``h`` to
``h - 2 w (w . h) / s``; its pullback for a cotangent ``y_bar`` of ``y = H h`` (every row) is::

    h_bar = H y_bar
    w_bar = -(2/s) sum_n [ (y_bar_n . w) h_n + (w . h_n) y_bar_n - 2 (w . h_n)(y_bar_n . w) w / s ]
"""

import numpy as np

__all__ = ["check_permutation", "inverse_permutation", "scaled_reflections", "reflect",
           "reflect_pullback"]


def check_permutation(permutation, dim, where):
    """Return ``permutation`` as an owned int64 array, or raise ``ValueError`` naming the problem."""
    if isinstance(permutation, str):
        raise ValueError(f"{where}: permutation must be an array of integers, got {permutation!r}")
    try:
        perm = np.asarray(permutation)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{where}: permutation could not be converted to an array ({exc})") from None
    # bool is an integer dtype to NumPy but never what a caller means by an index.
    if perm.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: permutation must hold integers (a permutation of 0..{dim - 1}), "
            f"got dtype {perm.dtype}"
        )
    if perm.ndim != 1 or perm.shape[0] != dim:
        raise ValueError(
            f"{where}: permutation must have length {dim} (shape ({dim},)), got shape {perm.shape}"
        )
    out_of_range = (perm < 0) | (perm >= dim)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise ValueError(
            f"{where}: permutation entries must lie in 0..{dim - 1}; entry {i} is {int(perm[i])}"
        )
    perm = perm.astype(np.int64)
    counts = np.bincount(perm, minlength=dim)
    if (counts != 1).any():
        repeated = np.flatnonzero(counts > 1).tolist()
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"{where}: permutation has duplicates: value(s) {repeated} repeated, "
            f"{missing} missing"
        )
    return perm


def inverse_permutation(perm):
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.shape[0], dtype=perm.dtype)
    return inv


def scaled_reflections(layer, direction, vectors):
    """Householder vectors (float64, one per row) scaled to max-abs 1, and their scales.

    Reflections are scale-free, and max-abs 1 keeps ``v . v`` from overflowing. A zero vector
    is a domain error of ``layer`` (``Householder``, ``Sylvester``'s H-SNF ``Q``).
    """
    scale = np.max(np.abs(vectors), axis=1)
    if (scale == 0).any():
        j = int(np.argmax(scale == 0))
        raise layer._domain_error(
            direction,
            f"reflection {j} has a zero vector (params['vectors'][{j}] is all zeros); "
            f"H = I - 2 v v^T / (v^T v) is undefined for v = 0",
        )
    return vectors / scale[:, None], scale


def reflect(h, w, s):
    """``H h`` row-wise for ``H = I - 2 w w^T / s``, ``s = w^T w``."""
    return h - np.outer((h @ w) * (2 / s), w)


def reflect_pullback(h, y_bar, w, s):
    """``(h_bar, w_bar)`` of one reflection ``y = H h``, with ``w_bar`` summed over rows."""
    a = h @ w
    g = y_bar @ w
    w_bar = -(2 / s) * (g @ h + a @ y_bar - (2 / s) * (a @ g) * w)
    return y_bar - np.outer(g * (2 / s), w), w_bar
