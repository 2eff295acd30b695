r"""Exact sums of float64 values: means and standard deviations that do not depend on the order
of the values or on how they are split into chunks.

Every finite double is ``v = f 2^e`` (``np.frexp``: ``0.5 <= |f| < 1``, or ``v = f = 0``), and
its 53-bit significand splits into two integers of at most 26 bits::

    a = rint(f 2^26),   b = (f 2^26 - a) 2^27,   v = a 2^(e - 26) + b 2^(e - 53),   |a|, |b| <= 2^26

(``f 2^26`` has 26 integer and 27 fractional bits, so both steps are exact). The ``a`` of the
values sharing a column and an exponent ``e`` are summed by ``np.bincount`` in float64, which is
exact: every partial sum is an integer below ``2^26 * 2^26 < 2^53`` (at most ``2^26`` values per
call). The bins are then added as Python integers scaled by ``2^-BASE``: the result is the exact
sum, the same for any order and any grouping of the values. Squares are exact in the same way::

    f^2 = a^2 2^-52 + 2ab 2^-79 + b^2 2^-106

where ``a^2``, ``ab`` and ``b^2`` are integers below ``2^52`` (exact products), each split into a
high and a low 26-bit half before binning. From the exact sums ``S1 = sum x`` and
``S2 = sum x^2`` of ``n`` values, the mean ``S1 / n`` and the population standard deviation
``sqrt(S2 / n - (S1 / n)^2)`` are evaluated in integer arithmetic and rounded once: both are
correctly rounded (no cancellation, no overflow of squares of values near 1e308, no underflow of
squares of values near 1e-300).

Cost: about 10 NumPy passes per value for the sums, 30 with the squares (tens of ns per value).
"""

import math

import numpy as np

__all__ = ["Moments", "CrossMoments", "exact_mean", "partial_sum", "mean_from_sum"]

#: Every term below is an integer multiple of ``2^BASE``: values are multiples of ``2^(e - 53)``
#: with ``e >= -1073`` (the smallest subnormal), squares multiples of ``2^(2e - 106)``.
BASE = -2252
#: The exponents ``np.frexp`` gives finite doubles (and 0 for zero).
_EMIN, _EMAX = -1073, 1024
_NE = _EMAX - _EMIN + 1
#: Values per ``np.bincount`` call: the float64 bins stay exact while fewer than 2^26 values
#: share one (``2^26 * 2^26 < 2^53``).
_BLOCK = 1 << 16
_TWO26 = float(1 << 26)
_TWO27 = float(1 << 27)
#: Rows summed into the float64 bins of :class:`CrossMoments` before they are flushed.
_ROWS_EXACT = 1 << 25


def _binned(out, weights, key, factor, offset):
    """Add to ``out[j]`` (Python ints scaled by ``2^-BASE``) the sum over the values of column
    ``j`` of ``weights * 2^(factor * e + offset)``; ``weights`` are integer-valued float64 with
    ``|w| <= 2^26`` and ``key = j * _NE + e - _EMIN`` their bins."""
    sums = np.bincount(key, weights=weights.ravel(), minlength=len(out) * _NE)
    nonzero = np.flatnonzero(sums)
    for i, total in zip(nonzero.tolist(), sums[nonzero].tolist()):
        j, e = divmod(i, _NE)
        out[j] += int(total) << (factor * (e + _EMIN) + offset - BASE)


def _split26(v):
    """``v`` (integer-valued, ``|v| <= 2^52``) as ``high 2^26 + low``, both ``<= 2^26``."""
    high = np.floor(v / _TWO26)
    return high, v - high * _TWO26


class Moments:
    """Exact running sums of the columns of 2-D float64 blocks: count, sum, sum of squares,
    minimum and maximum per column; mergeable (and picklable) in any order.

    Parameters
    ----------
    n_cols : int
    squares : bool, default True
        Also accumulate the sums of squares (for :meth:`std`).
    """

    def __init__(self, n_cols, squares=True):
        self.n_cols = int(n_cols)
        self.n = 0
        self.s1 = [0] * self.n_cols
        self.s2 = [0] * self.n_cols if squares else None
        self.low = np.full(self.n_cols, np.inf)
        self.high = np.full(self.n_cols, -np.inf)

    def add(self, values):
        """Add the rows of ``values`` (``(m, n_cols)``, finite; float32 is widened exactly)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n_cols:
            raise ValueError(f"Moments.add: expected shape (m, {self.n_cols}), got "
                             f"{values.shape}")
        if values.shape[0] == 0:
            return self
        rows = max(1, _BLOCK // self.n_cols)
        for start in range(0, values.shape[0], rows):
            self._add_block(values[start:start + rows])
        self.n += values.shape[0]
        self.low = np.minimum(self.low, values.min(axis=0))
        self.high = np.maximum(self.high, values.max(axis=0))
        return self

    def _add_block(self, v):
        f, e = np.frexp(v)
        key = (e + (np.arange(self.n_cols) * _NE - _EMIN)).ravel()
        scaled = f * _TWO26
        a = np.rint(scaled)
        b = (scaled - a) * _TWO27
        # v = a 2^(e-26) + b 2^(e-53)
        _binned(self.s1, a, key, 1, -26)
        _binned(self.s1, b, key, 1, -53)
        if self.s2 is None:
            return
        # v^2 = (a^2 2^-52 + 2ab 2^-79 + b^2 2^-106) 2^(2e); each product is exact (< 2^53)
        for product, offset in ((a * a, -52), (a * b, -78), (b * b, -106)):
            high, low = _split26(product)
            _binned(self.s2, high, key, 2, offset + 26)
            _binned(self.s2, low, key, 2, offset)

    def merge(self, other):
        """Add another accumulator's sums (exact: the order of merges does not matter)."""
        if other.n_cols != self.n_cols or (other.s2 is None) != (self.s2 is None):
            raise ValueError("Moments.merge: the accumulators differ in columns or kind")
        self.n += other.n
        self.s1 = [x + y for x, y in zip(self.s1, other.s1)]
        if self.s2 is not None:
            self.s2 = [x + y for x, y in zip(self.s2, other.s2)]
        self.low = np.minimum(self.low, other.low)
        self.high = np.maximum(self.high, other.high)
        return self

    def _denominator(self):
        if self.n == 0:
            raise ValueError("Moments: no values were added")
        return self.n << -BASE          # sum = S * 2^BASE: mean = S / (n 2^-BASE)

    def mean(self):
        """The correctly rounded mean of each column."""
        d = self._denominator()
        return np.array([s / d for s in self.s1])  # int / int is correctly rounded

    def _variance_numerators(self):
        # var = S2 2^BASE / n - (S1 2^BASE / n)^2 = (S2 n 2^-BASE - S1^2) / d^2, d = n 2^-BASE
        return [(s2 * self.n << -BASE) - s1 * s1 for s1, s2 in zip(self.s1, self.s2)]

    def std(self):
        """The correctly rounded population standard deviation of each column."""
        if self.s2 is None:
            raise ValueError("Moments.std: the sums of squares were not accumulated")
        d = self._denominator()
        return np.array([_sqrt_ratio(num, d * d) for num in self._variance_numerators()])

    def constant(self):
        """Columns whose variance is within the rounding error of computing it in float64,
        ``var <= n eps var + (n eps mean)^2`` (scikit-learn's ``StandardScaler`` rule),
        evaluated exactly: ``num (2^104 - n 2^52) <= (n S1)^2``."""
        n = self.n
        return np.array([num * ((1 << 104) - n * (1 << 52)) <= (n * s1) ** 2
                         for num, s1 in zip(self._variance_numerators(), self.s1)])


class CrossMoments:
    r"""Exact running sums of the columns and of the products of pairs of columns of 2-D
    float64 blocks, for a covariance matrix that does not depend on the order of the rows or
    on how they are split into chunks; mergeable in any order.

    With the splits ``x_i = a_i 2^(e_i - 26) + b_i 2^(e_i - 53)`` of the module docs, a product
    of two values is the sum of four exact integer products below ``2^52``::

        x_i x_j = (a_i a_j 2^-52 + (a_i b_j + b_i a_j) 2^-79 + b_i b_j 2^-106) 2^(e_i + e_j)

    each split into 26-bit halves and binned by the pair and by the power of two it multiplies,
    as the squares of :class:`Moments` are (float64 bins over many rows, exact integers, then
    added as Python integers). :meth:`covariance` then evaluates the population covariance
    ``(n S_ij - S_i S_j) / n^2`` in integer arithmetic and rounds it once (correctly rounded).

    Parameters
    ----------
    n_cols : int
    """

    def __init__(self, n_cols):
        self.n_cols = int(n_cols)
        self.first, self.second = np.triu_indices(self.n_cols)
        self.sums = Moments(self.n_cols, squares=False)
        self.products = [0] * self.first.size

    @property
    def n(self):
        return self.sums.n

    def add(self, values):
        """Add the rows of ``values`` (``(m, n_cols)``, finite; float32 is widened exactly)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n_cols:
            raise ValueError(f"CrossMoments.add: expected shape (m, {self.n_cols}), got "
                             f"{values.shape}")
        self.sums.add(values)
        pairs = self.first.size
        rows = max(1, _BLOCK // pairs)
        # float64 bins by pair and by t (a term w 2^t): a row puts at most 2 terms of
        # |w| <= 2^26 in a bin, so the bins stay exact integers (below 2^52) while fewer than
        # _ROWS_EXACT = 2^25 rows are in them; they are flushed to Python integers when the
        # exponents leave their window, at that count, and at the end of the call
        bins, low, high, count = None, 0, -1, 0
        for start in range(0, values.shape[0], rows):
            f, e = np.frexp(values[start:start + rows])
            t = e[:, self.first] + e[:, self.second]            # e_i + e_j, (m, pairs)
            t_low, t_high = int(t.min()) - 106, int(t.max()) - 26
            if bins is None or t_low < low or t_high > high or count + len(t) >= _ROWS_EXACT:
                if bins is not None:
                    self._flush(bins, low, high)
                    t_low, t_high = min(t_low, low), max(t_high, high)
                low, high, count = t_low, t_high, 0
                bins = np.zeros(pairs * (high - low + 1))
            self._add_block(f, t, bins, low, high)
            count += len(t)
        if bins is not None:
            self._flush(bins, low, high)
        return self

    def _add_block(self, f, t, bins, low, high):
        scaled = f * _TWO26
        a = np.rint(scaled)
        b = (scaled - a) * _TWO27
        i, j = self.first, self.second
        width = high - low + 1
        key = t + (np.arange(t.shape[1]) * width - low)         # the bin of 2^(e_i + e_j)
        for product, offset in ((a[:, i] * a[:, j], -52), (a[:, i] * b[:, j], -79),
                                (b[:, i] * a[:, j], -79), (b[:, i] * b[:, j], -106)):
            upper, lower = _split26(product)
            for weights, shift in ((upper, offset + 26), (lower, offset)):
                bins += np.bincount((key + shift).ravel(), weights=weights.ravel(),
                                    minlength=bins.size)

    def _flush(self, bins, low, high):
        """Add the float64 bins (exact integers) to the Python-integer sums."""
        width = high - low + 1
        nonzero = np.flatnonzero(bins)
        for k, total in zip(nonzero.tolist(), bins[nonzero].tolist()):
            p, r = divmod(k, width)
            self.products[p] += int(total) << (r + low - BASE)

    def merge(self, other):
        """Add another accumulator's sums (exact: the order of merges does not matter)."""
        if other.n_cols != self.n_cols:
            raise ValueError("CrossMoments.merge: the accumulators differ in columns")
        self.sums.merge(other.sums)
        self.products = [x + y for x, y in zip(self.products, other.products)]
        return self

    def covariance(self):
        """The correctly rounded population covariance matrix ``(n_cols, n_cols)``."""
        d = self.sums._denominator()
        s1, n = self.sums.s1, self.sums.n
        cov = np.empty((self.n_cols, self.n_cols))
        for p, (i, j) in enumerate(zip(self.first.tolist(), self.second.tolist())):
            # cov = S_ij 2^BASE / n - S_i S_j 2^(2 BASE) / n^2 = (n S_ij 2^-BASE - S_i S_j) / d^2
            cov[i, j] = cov[j, i] = ((n * self.products[p] << -BASE) - s1[i] * s1[j]) / (d * d)
        return cov


def _sqrt_ratio(num, den):
    """``sqrt(num / den)`` correctly rounded to float64, for integers ``num >= 0``, ``den > 0``.

    ``q = floor(2^k sqrt(num / den))`` with ``k`` chosen so that ``q`` has about 56 bits
    (``floor(sqrt(floor(y))) = floor(sqrt(y))``); ``2q`` if the root is exact, else ``2q + 1``
    (a sticky bit below the rounding position), rounds to the same double as the true value.
    """
    if num == 0:
        return 0.0
    k = 56 - (num.bit_length() - den.bit_length()) // 2
    if k >= 0:
        top, bottom = num << (2 * k), den
    else:
        top, bottom = num, den << (-2 * k)
    q = math.isqrt(top // bottom)
    sticky = 0 if q * q * bottom == top else 1
    return math.ldexp(float(2 * q + sticky), -(k + 1))


def mean_from_sum(n, s1, n_neg_inf):
    """The mean of ``n`` values from the exact sum ``s1`` (scaled by ``2^-BASE``) of the finite
    ones and the count of ``-inf`` among them: ``-inf`` if there is any."""
    if n_neg_inf:
        return -math.inf
    return s1 / (n << -BASE)


def exact_mean(values):
    """The correctly rounded mean of a 1-D array of finite values and ``-inf`` (then ``-inf``);
    the same for any order of the values and any split into chunks (see the module docs)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("exact_mean: no values")
    n, s1, n_neg_inf = partial_sum(values)
    return mean_from_sum(n, s1, n_neg_inf)


def partial_sum(values):
    """``(n, exact sum of the finite values scaled by 2^-BASE, count of -inf)`` of 1-D values,
    to be added up over chunks and finished by :func:`mean_from_sum`; NaN and ``+inf`` raise."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(values)
    n_neg_inf = int(np.count_nonzero(values == -np.inf))
    if n_neg_inf + int(np.count_nonzero(finite)) != values.size:
        raise ValueError("exact_mean: the values hold NaN or +inf")
    moments = Moments(1, squares=False).add(values[finite].reshape(-1, 1))
    return values.size, moments.s1[0], n_neg_inf
