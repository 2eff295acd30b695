r"""Neural transformers in masked autoregressive layers: ``NeuralAutoregressive`` (deep sigmoidal
flows, Huang et al. 2018), ``MaskedMonotonicAutoregressive`` (zuko's NAF: a monotonic network
fed with signals) and ``UnconstrainedMonotonicAutoregressive`` (UMNN, Wehenkel & Louppe 2019).

Each applies an increasing scalar map ``f(.; theta_i(x_<i))`` in the density direction
(``inverse``: ``z_i = f(x_i)``, one MADE pass) and inverts it numerically, coordinate by
coordinate in degree order, to sample (``forward``). The solver (bracketed, safeguarded Newton,
to four ulps of ``x``; its worst case) and the implicit-function pullback of the sampling
direction are in :mod:`refflow.bijectors._monotone`. Pyro's ``NeuralAutoregressive`` (the
"IAF flavour", transformer in the sampling direction) is ``Inverse(NeuralAutoregressive(...))``.

The monotonic and integrand networks are one small MLP *per coordinate* (zuko's
``stack=features``), with weights ``network.w{l}`` of shape ``(dim, out, in)``; their input is
``[x_i, signal_i]`` with the signals from the MADE. Their passes carry the derivative with
respect to the first input (forward mode, ``a' = W h'``, ``h' = s'(a) a'``), and their pullbacks
run backwards through both the values and these derivatives (second derivatives ``s''`` of the
activations enter there).

References
----------
Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", 2018, arXiv:1804.00779.
Wehenkel, Louppe, "Unconstrained Monotonic Neural Networks", 2019, arXiv:1908.05164.
Trefethen, "Is Gauss quadrature better than Clenshaw-Curtis?", SIAM Review 50(1), 2008.
"""

import numpy as np

from .._validation import check_choice, check_dim, check_hidden, check_int, check_rng
from ..io.spec import constructor_arguments
from ..kernels.monotone import SIGMOIDAL
from ._monotone import (MonotoneAutoregressive, TransformerDomainError, kernel_solve, log_sigmoid,
                        logsumexp, sigmoid, softplus, solve_increasing, uniform_init)

__all__ = ["NeuralAutoregressive", "MaskedMonotonicAutoregressive",
           "UnconstrainedMonotonicAutoregressive", "quadrature_rule", "QUADRATURES"]

QUADRATURES = ("gauss-legendre", "clenshaw-curtis")


def quadrature_rule(name, n):
    """Nodes ``c`` and weights ``w`` of an ``n``-node rule on ``[0, 1]`` (``sum w = 1``).

    ``"gauss-legendre"``: the Gauss-Legendre nodes (exact for polynomials of degree
    ``2n - 1``); ``"clenshaw-curtis"``: the Chebyshev extreme points ``(1 + cos(j pi / N)) /
    2``, ``N = n - 1`` (endpoints included, exact for degree ``N``), weights from Trefethen's
    ``clencurt``. For an integrand analytic inside the Bernstein ellipse ``E_rho`` of the
    interval, with ``|g| <= Mx`` there, the errors are at most (Trefethen 2008, thms 4.5, 5.1)
    ``64 Mx / (15 (rho^2 - 1) rho^(2n))`` (Gauss) and ``64 Mx / (15 (rho^2 - 1) rho^N)``
    (Clenshaw-Curtis), times half the interval's length.

    Examples
    --------
    >>> c, w = quadrature_rule("gauss-legendre", 3)
    >>> float(w.sum()), bool(abs(np.sum(w * c**5) - 1 / 6) < 1e-15)
    (1.0, True)
    """
    where = "quadrature_rule"
    name = check_choice(name, QUADRATURES, where, "name")
    if name == "gauss-legendre":
        n = check_int(n, where, "n", minimum=1)
        t, w = np.polynomial.legendre.leggauss(n)
        return (t + 1.0) / 2.0, w / 2.0
    n = check_int(n, where, "n", minimum=2)
    N = n - 1
    theta = np.pi * np.arange(N + 1) / N
    t = np.cos(theta)
    w = np.zeros(N + 1)
    inner = np.arange(1, N)
    v = np.ones(N - 1)
    if N % 2 == 0:
        w[0] = w[N] = 1.0 / (N * N - 1)
        for k in range(1, N // 2):
            v -= 2.0 * np.cos(2 * k * theta[inner]) / (4 * k * k - 1)
        v -= np.cos(N * theta[inner]) / (N * N - 1)
    else:
        w[0] = w[N] = 1.0 / (N * N)
        for k in range(1, (N - 1) // 2 + 1):
            v -= 2.0 * np.cos(2 * k * theta[inner]) / (4 * k * k - 1)
    w[inner] = 2.0 * v / N
    return (t + 1.0) / 2.0, w / 2.0


# ======================================================================== activations
def _elu3(a):
    neg = np.minimum(a, a.dtype.type(0))
    e = np.exp(neg)
    pos = a > 0
    one, zero = a.dtype.type(1), a.dtype.type(0)
    return np.where(pos, a, np.expm1(neg)), np.where(pos, one, e), np.where(pos, zero, e)


def _tanh3(a):
    t = np.tanh(a)
    d = 1 - t * t
    return t, d, -2 * t * d


def _softplus3(a):
    s = sigmoid(a)
    return softplus(a), s, s * sigmoid(-a)


#: ``name -> a -> (s(a), s'(a), s''(a))``, elementwise, stable for |a| up to 1e3.
_ACTIVATIONS = {"elu": _elu3, "tanh": _tanh3, "softplus": _softplus3}


def _two_way(fn, sign):
    """``s(a) = sign * fn(sign * a)`` per unit (zuko's ``TwoWayELU`` for ``sign = [+1.., -1..]``)."""
    def act(a):
        v, d1, d2 = fn(a * sign)
        return v * sign, d1, d2 * sign
    return act


def _layer_activations(name, widths, dtype, two_way):
    """One ``a -> (s, s', s'')`` per hidden layer; two-way (zuko's ``TwoWayELU``: the first
    ``ceil(H / 2)`` units ``s(a)``, the others ``-s(-a)``) for the monotonic networks."""
    fn = _ACTIVATIONS[name]
    if not two_way:
        return [fn] * len(widths)
    acts = []
    for width in widths:
        sign = np.ones(width, dtype=dtype)
        sign[(width + 1) // 2:] = -1
        acts.append(_two_way(fn, sign))
    return acts


# ================================================================ the networks with tangents
def _tangent_mlp(u, weights, biases, acts, need_residuals):
    """A stack of MLPs and their derivative along the first input.

    ``u`` ``(S, m, in)``; ``weights[l]`` ``(S, out, in)`` (the effective, e.g. positive,
    weights), ``biases[l]`` ``(S, out)``, ``acts[l]`` the hidden activations; the last layer
    has one output. Returns ``y, dy`` ``(S, m)`` (``dy = dy / du_0``) and the residuals. The
    output layer is a multiply-and-sum, not a GEMM, so that a row's value does not depend on
    the rows around it (chunked passes are bit-identical).
    """
    hs, dhs, res_acts = [u], [None], []
    h, dh = u, None
    for l, (w, b) in enumerate(zip(weights[:-1], biases[:-1])):
        wt = np.swapaxes(w, 1, 2)
        a = np.matmul(h, wt) + b[:, None, :]
        da = w[:, None, :, 0] if l == 0 else np.matmul(dh, wt)       # a' (first: W e_0)
        v, d1, d2 = acts[l](a)
        h, dh = v, d1 * da
        hs.append(h)
        dhs.append(dh)
        res_acts.append((d1, d2, da, a))
    w_last = weights[-1][:, 0, :]                                      # (S, in_last)
    y = np.sum(h * w_last[:, None, :], axis=-1) + biases[-1][:, 0][:, None]
    if dh is None:
        dy = np.broadcast_to(w_last[:, None, 0], y.shape).copy()
    else:
        dy = np.sum(dh * w_last[:, None, :], axis=-1)
    return y, dy, ((hs, dhs, res_acts) if need_residuals else None)


def _tangent_mlp_pullback(res, weights, y_bar, dy_bar, need_params):
    """``(u_bar, weight_bars, bias_bars)`` for cotangents ``y_bar``, ``dy_bar`` ``(S, m)``.

    Backwards through ``a_l = h_{l-1} W_l^T + b_l``, ``a'_l = h'_{l-1} W_l^T`` (``a'_1 = W_1
    e_0``), ``h_l = s(a_l)``, ``h'_l = s'(a_l) a'_l``::

        a_bar  = h_bar s'(a) + h'_bar s''(a) a',      a'_bar = h'_bar s'(a)
        W_bar  = a_bar^T h_{l-1} + a'_bar^T h'_{l-1}  (first layer: sum_m a'_bar in column 0)
        b_bar  = sum_m a_bar,   h_bar_{l-1} = a_bar W,   h'_bar_{l-1} = a'_bar W

    ``weight_bars`` / ``bias_bars`` are None when ``need_params`` is False.
    """
    hs, dhs, acts = res
    L = len(weights)
    w_bars, b_bars = [None] * L, [None] * L
    w_last = weights[-1][:, 0, :]
    if need_params:
        wb = np.sum(y_bar[..., None] * hs[-1], axis=1)
        if dhs[-1] is not None:
            wb = wb + np.sum(dy_bar[..., None] * dhs[-1], axis=1)
        else:
            wb[:, 0] += np.sum(dy_bar, axis=1)
        w_bars[-1] = wb[:, None, :]
        b_bars[-1] = np.sum(y_bar, axis=1)[:, None]
    h_bar = y_bar[..., None] * w_last[:, None, :]
    dh_bar = dy_bar[..., None] * w_last[:, None, :]
    for l in range(L - 2, -1, -1):
        d1, d2, da, _ = acts[l]
        a_bar = h_bar * d1 + dh_bar * d2 * da
        da_bar = dh_bar * d1
        w = weights[l]
        if need_params:
            wb = np.matmul(np.swapaxes(a_bar, 1, 2), hs[l])
            if l > 0:
                wb += np.matmul(np.swapaxes(da_bar, 1, 2), dhs[l])
            else:
                wb[:, :, 0] += np.sum(da_bar, axis=1)
            w_bars[l] = wb
            b_bars[l] = np.sum(a_bar, axis=1)
        h_bar = np.matmul(a_bar, w)
        if l > 0:
            dh_bar = np.matmul(da_bar, w)
    return h_bar, w_bars, b_bars


def _network_params(rng, dim, sizes):
    """torch-initialised stacked weights ``network.w{l}`` ``(dim, out, in)`` and biases
    ``network.b{l}`` ``(dim, out)`` (zuko's ``Linear``: both ``U(-1/sqrt(in), 1/sqrt(in))``)."""
    arrays = {}
    for l in range(len(sizes) - 1):
        fan_in, fan_out = sizes[l], sizes[l + 1]
        arrays[f"network.w{l}"] = uniform_init(rng, (dim, fan_out, fan_in), fan_in)
        arrays[f"network.b{l}"] = uniform_init(rng, (dim, fan_out), fan_in)
    return arrays


class _NetworkTransformer(MonotoneAutoregressive):
    """A transformer that is one small MLP per coordinate on ``[t, signal_i]``."""

    _whole_rows = True          # batched products: the solver passes every row (bit-identity)
    _two_way = False            # two-way activations and |W| weights (the monotonic network)

    def _setup_network(self, where, signal, network, network_activation, min_signal):
        self.signal = check_int(signal, where, "signal", minimum=min_signal)
        self.network = check_hidden(network, where, "network")
        # a monotonic network with a bounded activation (tanh) would be bounded: not onto R
        choices = ("elu", "softplus") if self._two_way else tuple(_ACTIVATIONS)
        self.network_activation = check_choice(network_activation, choices, where,
                                          "network_activation")
        sizes = (1 + self.signal, *self.network, 1)
        self._keys = ([f"network.w{l}" for l in range(len(sizes) - 1)],
                      [f"network.b{l}" for l in range(len(sizes) - 1)])
        return sizes

    #: Elements (dim x rows x nodes x width) per chunk of a pass without residuals: 32 MB.
    _CHUNK_ELEMENTS = 2 ** 22

    def _row_chunk(self):
        per_row = self.dim * getattr(self, "n_nodes", 1) * max(self.network + (1 + self.signal,))
        return max(256, self._CHUNK_ELEMENTS // per_row)

    def _weights(self, p, coords=None):
        sel = slice(None) if coords is None else coords
        raw = [p[k][sel] for k in self._keys[0]]
        biases = [p[k][sel] for k in self._keys[1]]
        weights = [np.abs(w) for w in raw] if self._two_way else raw
        return raw, weights, biases

    def _acts(self, dtype):
        return _layer_activations(self.network_activation, self.network, dtype, self._two_way)

    def _param_grads(self, raw, w_bars, b_bars):
        grads = {}
        for key, w, g in zip(self._keys[0], raw, w_bars):
            grads[key] = g * np.sign(w) if self._two_way else g    # d|w|/dw = sign(w)
        grads.update(zip(self._keys[1], b_bars))
        return grads

    @classmethod
    def _network_declaration(cls, args, min_signal, extra_params):
        """The MADE (``signal + extra_params`` outputs per coordinate) and the stacked
        networks ``network.w{l}`` ``(dim, out, in)``, ``network.b{l}`` ``(dim, out)``."""
        where = cls.__name__
        dim = check_dim(args["dim"], where)
        signal = check_int(args["signal"], where, "signal", minimum=min_signal)
        sizes = (1 + signal, *check_hidden(args["network"], where, "network"), 1)
        own = {}
        for l in range(len(sizes) - 1):
            own[f"network.w{l}"] = (dim, sizes[l + 1], sizes[l])
            own[f"network.b{l}"] = (dim, sizes[l + 1])
        return cls._monotone_declaration(args, signal + extra_params, own)

    def _network_config(self):
        return {"signal": self.signal, "network": list(self.network),
                "network_activation": self.network_activation}

    def _preactivations(self, u, p):
        """Every hidden pre-activation of the networks at inputs ``u`` ``(dim, m, in)``."""
        _, weights, biases = self._weights(p)
        acts = self._acts(u.dtype)
        h, out = u, []
        for l, (w, b) in enumerate(zip(weights[:-1], biases[:-1])):
            a = np.matmul(h, np.swapaxes(w, 1, 2)) + b[:, None, :]
            out.append(a)
            h = acts[l](a)[0]
        y = np.sum(h * weights[-1][:, 0, :][:, None, :], axis=-1) + biases[-1][:, 0][:, None]
        return out, y


# ============================================================ MaskedMonotonicAutoregressive
class MaskedMonotonicAutoregressive(_NetworkTransformer):
    r"""Masked autoregressive layer with a monotonic-network transformer (zuko's NAF).

    Density direction (``inverse``, one MADE pass), per coordinate ``i``::

        z_i = N_i(x_i, s_i),   s_i = signal(x_<i) in R^S from the MADE

    where ``N_i`` is a monotonic MLP of its own (zuko's ``MonotonicMLP``, one per coordinate):
    ``a_l = h_{l-1} |W_l|^T + b_l``, ``h_l = s(a_l)`` with the two-way activation (the first
    ``ceil(H / 2)`` units ``s(a)``, the others ``-s(-a)``; zuko's ``TwoWayELU`` for
    ``network_activation="elu"``), and a linear output. Non-negative weights and increasing
    activations make ``N_i`` increasing in ``x_i`` (and in the signals).

    Parameters
    ----------
    dim : int
    signal : int, default 16
        ``S``, signals per coordinate (zuko's default).
    network : sequence of int, default (64, 64)
        Hidden widths of every monotonic network (zuko's ``MonotonicMLP`` default).
    network_activation : {"elu", "softplus"}, default "elu"
        The two-way activation (zuko: ELU). "softplus" is a smooth analogue (``C^inf``; ELU's
        second derivative jumps at 0, which matters only to finite-difference checks). Both
        are unbounded on one side, so the network maps R onto R; a bounded activation (tanh)
        would not, and is refused.
    hidden, order, hidden_degrees, activation : MADE options (see :class:`refflow.nn.MADE`)
    context_dim : int, optional
    zero_last : bool, default False
    rng : None, int or numpy.random.Generator
        Draws the MADE, then the networks (torch's ``Linear`` initialisation).

    Notes
    -----
    Parameters ``network.w{l}`` ``(dim, out, in)`` (raw; the map uses ``|w|``) and
    ``network.b{l}`` ``(dim, out)``; the MADE gives ``S`` signals per coordinate.

    Log-det: ``l_i = log dN_i/dx_i``, the network's derivative along its first input carried
    forward with the values (``a'_1 = |W_1| e_0``, ``h'_l = s'(a_l) a'_l``, ``a'_{l+1} = |W_{l+1}|
    h'_l``, ``N' = |w_L| . h'_L``). Density-direction pullback for ``(z_bar, l_bar)``: the
    network's pullback with cotangents ``N_bar = z_bar`` on the value and ``N'_bar = l_bar /
    N'`` on the derivative (the rules of ``_tangent_mlp_pullback``: ``a_bar = h_bar s'(a) +
    h'_bar s''(a) a'``, ``a'_bar = h'_bar s'(a)``, ``W_bar = a_bar^T h + a'_bar^T h'``), giving
    ``x_bar`` (first input), the signals' cotangents (to the MADE) and the weights'
    (``w_bar = W_bar * sign(w)``). Sampling: the bracketed Newton iteration of
    :mod:`refflow.bijectors._monotone` (no fixed interval: zuko bisects on ``[-10, 10]`` only),
    with its implicit-function pullback.

    Asymptotically each ``N_i`` is linear on both sides (the ELU half of the units is linear for
    large positive inputs, the other half for large negative ones), so it maps R onto R.

    References
    ----------
    Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", 2018, arXiv:1804.00779.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import MaskedMonotonicAutoregressive
    >>> layer = MaskedMonotonicAutoregressive(2, signal=4, network=(8, 8), hidden=(8,), rng=0)
    >>> x = np.random.default_rng(1).normal(size=(3, 2))
    >>> z, log_det = layer.inverse(x)
    >>> x_back, log_det_back = layer.forward(z)
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12)), bool(np.allclose(log_det_back, -log_det))
    (True, True)
    """

    _two_way = True

    def __init__(self, dim, *, signal=16, network=(64, 64), network_activation="elu",
                 hidden=(64, 64), order="natural", hidden_degrees="cyclic", activation="relu",
                 context_dim=None, zero_last=False, rng=None):
        where = "MaskedMonotonicAutoregressive"
        rng = check_rng(rng, f"{where}: rng")
        sizes = self._setup_network(where, signal, network, network_activation, 1)
        super().__init__(dim, self.signal, hidden, order, hidden_degrees, activation,
                         context_dim, zero_last, rng)
        self._params = type(self._params)(_network_params(rng, self.dim, sizes))

    def __repr__(self):
        return (f"MaskedMonotonicAutoregressive(dim={self.dim}, signal={self.signal}, "
                f"network={self.network}, hidden={tuple(self.made.hidden)})")

    def _config(self):
        return dict(self._made_config(), **self._network_config())

    @classmethod
    def _declare(cls, config):
        return cls._network_declaration(constructor_arguments(cls, config), 1, 0)

    @staticmethod
    def _inputs(x, signals):
        """``[x_i, s_i]`` stacked by coordinate: ``(dim, n, 1 + S)``."""
        return np.concatenate([x.T[..., None], np.swapaxes(signals, 0, 1)], axis=-1)

    def _elements(self, x, theta, p, vjp):
        raw, weights, biases = self._weights(p)
        u = self._inputs(x, theta)
        y, dy, res = _tangent_mlp(u, weights, biases, self._acts(x.dtype), vjp)
        z, ell = np.ascontiguousarray(y.T), np.ascontiguousarray(np.log(dy).T)
        if not vjp:
            return z, ell, None

        def pullback(z_bar, ell_bar, need_params=True):
            u_bar, w_bars, b_bars = _tangent_mlp_pullback(
                res, weights, np.ascontiguousarray(z_bar.T), ell_bar.T / dy, need_params)
            x_bar = np.ascontiguousarray(u_bar[..., 0].T)
            theta_bar = np.ascontiguousarray(np.swapaxes(u_bar[..., 1:], 0, 1))
            grads = self._param_grads(raw, w_bars, b_bars) if need_params else {}
            return x_bar, theta_bar, grads

        return z, ell, pullback

    def _scalar(self, i, x, theta_i, p):
        _, weights, biases = self._weights(p, slice(i, i + 1))
        u = np.concatenate([x[:, None], theta_i], axis=-1)[None]
        y, dy, _ = _tangent_mlp(u, weights, biases, self._acts(x.dtype), False)
        return y[0], dy[0]

    def _solve(self, i, z_i, theta_i, p):
        # the network's weights and the signal columns are fixed during the solve
        _, weights, biases = self._weights(p, slice(i, i + 1))
        acts = self._acts(z_i.dtype)
        u = np.concatenate([np.zeros_like(z_i)[:, None], theta_i], axis=-1)[None]

        def evaluate(x, idx):                       # idx: every row (whole=True)
            u[0, :, 0] = x
            y, dy, _ = _tangent_mlp(u, weights, biases, acts, False)
            return y[0], dy[0]

        return solve_increasing(evaluate, z_i, np.zeros_like(z_i), whole=True,
                                where=f"{type(self).__name__}.forward")

    def _kink_distance(self, direction, v, context=None):
        """Per row, the smallest ``|a|`` of a hidden pre-activation at the layer's data-side
        point (ELU's second derivative jumps at 0); ``inf`` for smooth activations. Used by
        the registry to keep finite differences off the kinks."""
        if self.network_activation != "elu":
            return np.full(v.shape[0], np.inf)
        x = v if direction == "inverse" else self.forward(v, context)[0]
        theta = self.made(x, context)
        pre, _ = self._preactivations(self._inputs(x, theta), self._p(np.float64))
        return np.min([np.abs(a).min(axis=(0, 2)) for a in pre], axis=0)


# ====================================================== UnconstrainedMonotonicAutoregressive
def _pos_softclip(y):
    """zuko's ``exp(y / (1 + |y| / 7))`` in ``[e^-7, e^7]``: value, first, second derivative."""
    dt = y.dtype.type
    q = 1 + np.abs(y) / dt(7)
    g = np.exp(y / q)
    u1 = 1 / (q * q)
    u2 = dt(-2.0 / 7.0) * np.sign(y) / (q * q * q)
    return g, g * u1, g * (u1 * u1 + u2)


def _pos_elu(y):
    """``ELU(y) + 1`` (Wehenkel & Louppe's integrand)."""
    v, d1, d2 = _elu3(y)
    return v + 1, d1, d2


def _pos_exp(y):
    g = np.exp(y)
    return g, g, g


_POSITIVE = {"softclip": _pos_softclip, "elu": _pos_elu, "exp": _pos_exp}


class UnconstrainedMonotonicAutoregressive(_NetworkTransformer):
    r"""Masked autoregressive UMNN layer: the integral of a positive network by a fixed rule.

    Density direction (``inverse``, one MADE pass), per coordinate ``i`` (Wehenkel & Louppe
    2019; zuko's UNAF)::

        z_i = F_i(x_i) + beta_i,   F_i(x) = x sum_k w_k g_i(c_k x; s_i)
                                    (the n-node rule of int_0^x g_i(t; s_i) dt)
        g_i(t; s) = P(N_i(t, s)) > 0

    with signals ``s_i`` and constant ``beta_i`` from the MADE, ``N_i`` an MLP per coordinate
    (``network_activation`` hidden units, linear output) and ``P`` the positive map
    (``"softclip"``: zuko's ``exp(y / (1 + |y| / 7))`` in ``[e^-7, e^7]``; ``"elu"``: the
    paper's ``ELU(y) + 1``; ``"exp"``). Nodes ``c_k`` and weights ``w_k`` on ``[0, 1]``:
    :func:`quadrature_rule` (Gauss-Legendre or Clenshaw-Curtis, ``n_nodes`` fixed).

    **What is exact.** The bijection *is* the quadrature rule applied to ``g``: ``F_i`` above,
    computed to round-off. Its log-det is the exact derivative of that map,

        l_i = log F_i'(x),   F_i'(x) = sum_k w_k (g(c_k x) + c_k x g'(c_k x)),

    not ``log g(x)``: the paper and zuko report ``log g(x)``, which differs from the map's own
    log-Jacobian by the derivative of the quadrature error (a density that does not integrate
    to one, and gradients that do not match the map). The two agree to the rule's accuracy: for
    ``g`` analytic in the Bernstein ellipse ``E_rho`` of ``[0, x]`` with ``|g| <= Mx`` there,
    ``|F(x) - int_0^x g| <= |x| (32 / 15) Mx rho^(-2n) / (rho^2 - 1)`` (Gauss-Legendre) and
    ``|x| (32 / 15) Mx rho^(-(n-1)) / (rho^2 - 1)`` (Clenshaw-Curtis) (Trefethen 2008, thms
    4.5, 5.1 scaled to ``[0, x]``): geometric in ``n`` for the smooth activations ("tanh",
    "softplus"); with ELU units or the softclip's ``|y|``, ``g`` is only ``C^1`` with a second
    derivative of bounded variation, and the Gauss-Legendre error is ``O(n^-2)`` (thm 4.5 with
    ``k = 2``: ``(|x| / 2) 16 V / (15 pi (2n - 1)^2)``, ``V`` the variation of the second
    derivative of ``s -> g(x (s + 1) / 2)`` on ``[-1, 1]``; about ``n^-2.2`` measured).
    ``tests/bijectors/test_neural.py`` measures these rates.

    ``F_i`` is increasing wherever ``F_i' > 0``, i.e. wherever the rule resolves ``g`` on
    ``[0, x]``; for large ``|x|`` (relative to ``g``'s variation) a fixed rule may not. A pass
    that meets ``F_i' <= 0`` raises ``ValueError``; but where the rule's map folds, a target
    with two preimages can be inverted to the other one without any error, so keep the inputs
    where the rule resolves the integrand (standardised data; more nodes for wider ranges).
    zuko, likewise, guarantees invertibility only on ``[-10, 10]``.

    Parameters
    ----------
    dim : int
    signal : int, default 16
    network : sequence of int, default (64, 64)
        Hidden widths of each integrand network (zuko's UMNN default).
    network_activation : {"elu", "softplus", "tanh"}, default "elu"
        zuko's integrand uses ELU.
    positive : {"softclip", "elu", "exp"}, default "softclip"
    n_nodes : int, default 32
        Nodes of the rule (zuko's Gauss-Legendre default).
    quadrature : {"gauss-legendre", "clenshaw-curtis"}, default "gauss-legendre"
    hidden, order, hidden_degrees, activation : MADE options
    context_dim : int, optional
    zero_last : bool, default False
    rng : None, int or numpy.random.Generator

    Notes
    -----
    MADE outputs ``S + 1`` per coordinate: the signals, then ``beta`` (zuko's layout). With
    ``G_k = g(c_k x)``, ``G'_k = P'(y_k) N'_k``, ``s_k = c_k x``, the density-direction pullback
    for ``(z_bar, l_bar)`` runs the network's pullback at every node with cotangents on
    ``G_k`` and on ``G'_k``::

        G_bar_k  = z_bar x w_k + l_bar w_k / F',     G'_bar_k = l_bar w_k s_k / F'
        y_bar_k  = G_bar_k P'(y_k) + G'_bar_k P''(y_k) N'_k,   N'_bar_k = G'_bar_k P'(y_k)

    giving ``t_bar_k`` (the node input), the signals' and weights' cotangents; then
    ``x_bar = z_bar sum_k w_k G_k + sum_k c_k (t_bar_k + l_bar w_k G'_k / F')`` (the nodes
    move with ``x``) and ``beta_bar = z_bar``. This equals ``z_bar F' + l_bar F''/F'``. The
    sampling direction: bracketed Newton from ``x = 0`` with the implicit-function pullback
    (:mod:`refflow.bijectors._monotone`).

    References
    ----------
    Wehenkel, Louppe, "Unconstrained Monotonic Neural Networks", 2019, arXiv:1908.05164.
    Trefethen, "Is Gauss quadrature better than Clenshaw-Curtis?", SIAM Review 50(1), 2008.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import UnconstrainedMonotonicAutoregressive
    >>> layer = UnconstrainedMonotonicAutoregressive(2, signal=4, network=(8, 8), n_nodes=16,
    ...                                              hidden=(8,), rng=0)
    >>> x = np.random.default_rng(1).normal(size=(3, 2))
    >>> z, log_det = layer.inverse(x)
    >>> x_back, log_det_back = layer.forward(z)
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12)), bool(np.allclose(log_det_back, -log_det))
    (True, True)
    """

    def __init__(self, dim, *, signal=16, network=(64, 64), network_activation="elu",
                 positive="softclip", n_nodes=32, quadrature="gauss-legendre", hidden=(64, 64),
                 order="natural", hidden_degrees="cyclic", activation="relu", context_dim=None,
                 zero_last=False, rng=None):
        where = "UnconstrainedMonotonicAutoregressive"
        rng = check_rng(rng, f"{where}: rng")
        sizes = self._setup_network(where, signal, network, network_activation, 0)
        self.positive = check_choice(positive, tuple(_POSITIVE), where, "positive")
        self.quadrature = check_choice(quadrature, QUADRATURES, where, "quadrature")
        self.n_nodes = check_int(n_nodes, where, "n_nodes",
                                 minimum=1 if self.quadrature == "gauss-legendre" else 2)
        self._rule = quadrature_rule(self.quadrature, self.n_nodes)
        super().__init__(dim, self.signal + 1, hidden, order, hidden_degrees, activation,
                         context_dim, zero_last, rng)
        self._params = type(self._params)(_network_params(rng, self.dim, sizes))

    def __repr__(self):
        return (f"UnconstrainedMonotonicAutoregressive(dim={self.dim}, signal={self.signal}, "
                f"network={self.network}, n_nodes={self.n_nodes}, "
                f"quadrature={self.quadrature!r}, hidden={tuple(self.made.hidden)})")

    def _config(self):
        return dict(self._made_config(), **self._network_config(), positive=self.positive,
                    n_nodes=self.n_nodes, quadrature=self.quadrature)

    @classmethod
    def _declare(cls, config):
        return cls._network_declaration(constructor_arguments(cls, config), 0, 1)

    def _node_inputs(self, xt, signals):
        """``[c_k x, s]`` for every node: ``(S_stack, m * n_nodes, 1 + S)``, ``xt`` ``(S_stack, m)``,
        ``signals`` ``(S_stack, m, S)``."""
        c = self._rule[0].astype(xt.dtype)
        t = xt[..., None] * c                                         # (S_stack, m, Q)
        q = c.shape[0]
        sig = np.repeat(signals, q, axis=1)
        return t, np.concatenate([t.reshape(t.shape[0], -1, 1), sig], axis=-1)

    def _integral(self, xt, signals, beta, weights, biases, acts, need_residuals):
        """``F + beta``, ``F'`` ``(S_stack, m)`` and the residuals, by the rule."""
        c, w = (a.astype(xt.dtype) for a in self._rule)
        t, u = self._node_inputs(xt, signals)
        y, dy, res = _tangent_mlp(u, weights, biases, acts, need_residuals)
        shape = t.shape
        G, P1, P2 = _POSITIVE[self.positive](y.reshape(shape))
        dy = dy.reshape(shape)
        Gp = P1 * dy                                                   # dg/dt at the nodes
        WG = np.sum(w * G, axis=-1)
        F = xt * WG + beta
        Fp = np.sum(w * (G + t * Gp), axis=-1)
        return F, Fp, (t, G, Gp, P1, P2, dy, WG, res)

    def _integrand(self, t, signals, p):
        """``g(t; s)`` ``(S_stack, m)`` at points ``t`` ``(S_stack, m)`` with ``signals``
        ``(S_stack, m, S)`` (the positive network itself, no quadrature)."""
        _, weights, biases = self._weights(p)
        u = np.concatenate([t[..., None], signals], axis=-1)
        y, _, _ = _tangent_mlp(u, weights, biases, self._acts(t.dtype), False)
        return _POSITIVE[self.positive](y)[0]

    def _check_increasing(self, Fp):
        if not (Fp > 0).all():
            worst = float(np.nanmin(Fp))
            raise TransformerDomainError(
                f"the {self.n_nodes}-node {self.quadrature} rule applied "
                f"to the integrand is not increasing at some input (derivative {worst:.3g}); use "
                f"more nodes (n_nodes) or keep the inputs smaller")

    def _elements(self, x, theta, p, vjp):
        raw, weights, biases = self._weights(p)
        xt = np.ascontiguousarray(x.T)
        S = self.signal
        signals = np.swapaxes(theta[..., :S], 0, 1)
        beta = theta[..., S].T
        acts = self._acts(x.dtype)
        F, Fp, (t, G, Gp, P1, P2, dy, WG, res) = self._integral(xt, signals, beta, weights,
                                                                biases, acts, vjp)
        self._check_increasing(Fp)
        z, ell = np.ascontiguousarray(F.T), np.ascontiguousarray(np.log(Fp).T)
        if not vjp:
            return z, ell, None
        c, w = (a.astype(x.dtype) for a in self._rule)
        D, n, Q = t.shape

        def pullback(z_bar, ell_bar, need_params=True):
            zb, lb = z_bar.T, ell_bar.T / Fp                          # (D, n)
            g_bar = (zb * xt)[..., None] * w + lb[..., None] * w
            gp_bar = lb[..., None] * w * t
            y_bar = g_bar * P1 + gp_bar * P2 * dy
            dy_bar = gp_bar * P1
            u_bar, w_bars, b_bars = _tangent_mlp_pullback(
                res, weights, y_bar.reshape(D, n * Q), dy_bar.reshape(D, n * Q), need_params)
            t_bar = u_bar[..., 0].reshape(D, n, Q)
            sig_bar = u_bar[..., 1:].reshape(D, n, Q, S).sum(axis=2)
            x_bar = zb * WG + np.sum(c * (t_bar + lb[..., None] * w * Gp), axis=-1)
            theta_bar = np.empty(theta.shape, dtype=x.dtype)
            theta_bar[..., :S] = np.swapaxes(sig_bar, 0, 1)
            theta_bar[..., S] = z_bar
            grads = self._param_grads(raw, w_bars, b_bars) if need_params else {}
            return np.ascontiguousarray(x_bar.T), theta_bar, grads

        return z, ell, pullback

    def _scalar(self, i, x, theta_i, p):
        _, weights, biases = self._weights(p, slice(i, i + 1))
        S = self.signal
        F, Fp, _ = self._integral(x[None], theta_i[None, :, :S], theta_i[None, :, S], weights,
                                  biases, self._acts(x.dtype), False)
        return F[0], Fp[0]

    def _solve(self, i, z_i, theta_i, p):
        # weights, nodes and the signal columns of every node's input are fixed during the
        # solve: only the node positions c_k x change (the same arithmetic as _integral)
        _, weights, biases = self._weights(p, slice(i, i + 1))
        acts = self._acts(z_i.dtype)
        S, m = self.signal, z_i.shape[0]
        c, w = (a.astype(z_i.dtype) for a in self._rule)
        _, u = self._node_inputs(np.zeros_like(z_i)[None], theta_i[None, :, :S])
        beta = theta_i[:, S]
        positive = _POSITIVE[self.positive]

        def evaluate(x, idx):                       # idx: every row (whole=True)
            t = x[:, None] * c
            u[0, :, 0] = t.reshape(-1)
            y, dy, _ = _tangent_mlp(u, weights, biases, acts, False)
            G, P1, _ = positive(y[0].reshape(m, -1))
            Gp = P1 * dy[0].reshape(m, -1)
            return x * np.sum(w * G, axis=-1) + beta, np.sum(w * (G + t * Gp), axis=-1)

        return solve_increasing(evaluate, z_i, np.zeros_like(z_i), whole=True,
                                where=f"{type(self).__name__}.forward")

    def _kink_distance(self, direction, v, context=None):
        """Per row, the smallest distance of a node's hidden pre-activation (ELU) or output
        (the softclip's ``|y|``) to 0, where second derivatives jump; ``inf`` if smooth."""
        x = v if direction == "inverse" else self.forward(v, context)[0]
        theta = self.made(x, context)
        _, u = self._node_inputs(np.ascontiguousarray(x.T), np.swapaxes(theta[..., :self.signal], 0, 1))
        pre, y = self._preactivations(u, self._p(np.float64))
        n, Q = x.shape[0], self.n_nodes
        dist = np.full(n, np.inf)
        if self.network_activation == "elu":
            for a in pre:
                dist = np.minimum(dist, np.abs(a).reshape(self.dim, n, Q, -1).min(axis=(0, 2, 3)))
        if self.positive in ("softclip", "elu"):
            dist = np.minimum(dist, np.abs(y).reshape(self.dim, n, Q).min(axis=(0, 2)))
        return dist


# ===================================================================== NeuralAutoregressive
def _sigmoidal_layout(units, n_layers):
    """Per sigmoidal layer ``(d_in, d_out, offset)`` into a coordinate's MADE outputs, and
    their total: each layer reads ``[a (K) | w (K) | b (K) | u (d_in, if d_in > 1)]``."""
    layers, offset = [], 0
    for l in range(n_layers):
        d_in = 1 if l == 0 else units
        d_out = 1 if l == n_layers - 1 else units
        layers.append((d_in, d_out, offset))
        offset += 3 * units + (d_in if d_in > 1 else 0)
    return layers, offset


#: Below this raw value ``softplus(a) = e^a (1 - e^a / 2 + ...)`` and ``log softplus(a) = a``
#: to within 1e-17: used where ``softplus`` would underflow.
_LOG_SOFTPLUS_LINEAR = -40.0


def _sigmoidal(x, theta, p, units, n_layers, vjp):
    """The (deep dense) sigmoidal transformer on any leading shape: ``(z, l, residuals)``.

    Per layer, input ``h`` (``d_in``) with ``t = log dh/dx`` (all in log space)::

        pre_j = sum_i U_ji h_i,  C = a * pre + b,  log D_m = LSE_j(log W_mj + log sig(C_j)),
        log E_m = LSE_j(log W_mj + log sig(-C_j))  (E = 1 - D),  h'_m = log D_m - log E_m,
        q_j = LSE_i(log U_ji + t_i),  r_j = log a_j + log sig(C_j) + log sig(-C_j) + q_j,
        t'_m = LSE_j(log W_mj + r_j) - log D_m - log E_m
    """
    dt = x.dtype.type
    K = units
    layers, _ = _sigmoidal_layout(K, n_layers)
    dense = n_layers > 1
    h = x[..., None]
    t = np.zeros_like(h)
    res = []
    for l, (d_in, d_out, off) in enumerate(layers):
        a_raw = theta[..., off:off + K]
        b = theta[..., off + 2 * K:off + 3 * K]
        a = softplus(a_raw)
        tiny = np.finfo(x.dtype).tiny
        la = np.where(a_raw > dt(_LOG_SOFTPLUS_LINEAR), np.log(np.maximum(a, tiny)), a_raw)
        w_pre = theta[..., None, off + K:off + 2 * K]                  # (..., 1, K)
        if dense:
            w_pre = p[f"dense.w{l}"] + w_pre                            # (..., d_out, K)
        lse_w, W = logsumexp(w_pre, -1)
        lW = w_pre - lse_w[..., None]
        if d_in > 1:
            u_pre = p[f"dense.u{l}"] + theta[..., None, off + 3 * K:off + 3 * K + d_in]
            lse_u, U = logsumexp(u_pre, -1)                             # (..., K, d_in)
            lU = u_pre - lse_u[..., None]
            pre = np.einsum("...ji,...i->...j", U, h)
            q, kappa = logsumexp(lU + t[..., None, :], -1)
        else:
            U = kappa = None
            pre = np.broadcast_to(h, h.shape[:-1] + (K,))
            q = np.broadcast_to(t, t.shape[:-1] + (K,))
        C = a * pre + b
        lsp, lsn = log_sigmoid(C), log_sigmoid(-C)
        log_d, delta = logsumexp(lW + lsp[..., None, :], -1)
        log_e, eps = logsumexp(lW + lsn[..., None, :], -1)
        r = la + lsp + lsn + q
        T, rho = logsumexp(lW + r[..., None, :], -1)
        res.append((d_in, off, a_raw, a, W, U, kappa, h, pre, lsp, lsn, delta, eps, rho))
        h, t = log_d - log_e, T - log_d - log_e
    return h[..., 0], t[..., 0], (res if vjp else None)


def _sigmoidal_rows(theta, p, units, n_layers):
    """The kernel's constrained rows ``(m, P')``: per layer ``[a | log a | b | log W | log U]``
    (:mod:`refflow.kernels.monotone`), from MADE outputs ``theta`` ``(m, P)``."""
    dt = theta.dtype.type
    K, m = units, theta.shape[0]
    layers, _ = _sigmoidal_layout(K, n_layers)
    parts = []
    for l, (d_in, d_out, off) in enumerate(layers):
        a_raw = theta[:, off:off + K]
        a = softplus(a_raw)
        la = np.where(a_raw > dt(_LOG_SOFTPLUS_LINEAR),
                      np.log(np.maximum(a, np.finfo(a.dtype).tiny)), a_raw)
        w_pre = theta[:, None, off + K:off + 2 * K]
        if n_layers > 1:
            w_pre = p[f"dense.w{l}"] + w_pre
        w_pre = np.broadcast_to(w_pre, (m, d_out, K))
        lW = w_pre - logsumexp(w_pre, -1)[0][..., None]
        parts += [a, la, theta[:, off + 2 * K:off + 3 * K], lW.reshape(m, d_out * K)]
        if d_in > 1:
            u_pre = p[f"dense.u{l}"] + theta[:, None, off + 3 * K:off + 3 * K + d_in]
            lU = u_pre - logsumexp(u_pre, -1)[0][..., None]
            parts.append(lU.reshape(m, K * d_in))
    return np.concatenate(parts, axis=1)


def _sigmoidal_pullback(res, z_bar, ell_bar, units, n_layers, n_params, need_params):
    """``(x_bar, theta_bar, grads)`` of :func:`_sigmoidal` (reverse of its formulas)."""
    dt = z_bar.dtype.type
    K = units
    dense = n_layers > 1
    lead = z_bar.shape
    theta_bar = np.zeros(lead + (n_params,), dtype=z_bar.dtype)
    grads = {}
    h_bar, t_bar = z_bar[..., None], ell_bar[..., None]
    for l in range(n_layers - 1, -1, -1):
        d_in, off, a_raw, a, W, U, kappa, h, pre, lsp, lsn, delta, eps, rho = res[l]
        ld_bar = h_bar - t_bar                                      # on log D
        le_bar = -h_bar - t_bar                                     # on log E
        lW_bar = t_bar[..., None] * rho + ld_bar[..., None] * delta + le_bar[..., None] * eps
        r_bar = np.einsum("...m,...mk->...k", t_bar, rho)
        lsp_bar = np.einsum("...m,...mk->...k", ld_bar, delta) + r_bar
        lsn_bar = np.einsum("...m,...mk->...k", le_bar, eps) + r_bar
        C_bar = lsp_bar * np.exp(lsn) - lsn_bar * np.exp(lsp)      # dlog sig(C)/dC = sig(-C)
        pre_bar = C_bar * a
        dla = np.where(a_raw > dt(_LOG_SOFTPLUS_LINEAR), sigmoid(a_raw) / np.maximum(
            a, np.finfo(a.dtype).tiny), dt(1))
        theta_bar[..., off:off + K] = C_bar * pre * sigmoid(a_raw) + r_bar * dla
        theta_bar[..., off + 2 * K:off + 3 * K] = C_bar
        w_pre_bar = lW_bar - W * np.sum(lW_bar, axis=-1, keepdims=True)   # log-softmax
        theta_bar[..., off + K:off + 2 * K] = np.sum(w_pre_bar, axis=-2)
        if dense and need_params:
            grads[f"dense.w{l}"] = w_pre_bar.reshape(-1, *w_pre_bar.shape[-2:]).sum(axis=0)
        if d_in > 1:
            lU_bar = r_bar[..., None] * kappa + pre_bar[..., None] * U * h[..., None, :]
            t_bar = np.einsum("...j,...ji->...i", r_bar, kappa)
            h_bar = np.einsum("...j,...ji->...i", pre_bar, U)
            u_pre_bar = lU_bar - U * np.sum(lU_bar, axis=-1, keepdims=True)
            theta_bar[..., off + 3 * K:off + 3 * K + d_in] = np.sum(u_pre_bar, axis=-2)
            if need_params:
                grads[f"dense.u{l}"] = u_pre_bar.reshape(-1, *u_pre_bar.shape[-2:]).sum(axis=0)
        else:
            h_bar = np.sum(pre_bar, axis=-1, keepdims=True)
            t_bar = np.sum(r_bar, axis=-1, keepdims=True)
    return h_bar[..., 0], theta_bar, grads


class NeuralAutoregressive(MonotoneAutoregressive):
    r"""Masked autoregressive layer with a (deep dense) sigmoidal transformer (Huang et al. 2018).

    Density direction (``inverse``, one MADE pass), per coordinate, the deep sigmoidal flow
    (DSF, ``n_layers=1``, eq. 8 of the paper; Pyro's ``NeuralAutoregressive``)::

        z = logit( sum_k w_k sigmoid(a_k x + b_k) ),   a = softplus(.) > 0,  w = softmax(.)

    with ``a, w, b`` (``K = units`` each) from the MADE. With ``n_layers = L > 1`` it is the
    deep dense sigmoidal flow (DDSF, eq. 9; the paper's code ``DenseSigmoidFlow``): layers
    ``1 -> K -> ... -> K -> 1``, each::

        h' = logit( W sigmoid(a * (U h) + b) ),   W = softmax_rows(W0 + w),  U = softmax_rows(U0 + u)

    where ``a, b, w`` (``K``) and ``u`` (``d_in``, the row offsets of ``U``) come from the MADE
    and ``W0`` ``(d_out, K)``, ``U0`` ``(K, d_in)`` are the layer's own parameters
    ``dense.w{l}``, ``dense.u{l}`` (shared by all coordinates, as in the paper's code; a
    first layer has ``d_in = 1`` and no ``U``).

    Everything is evaluated in log space: ``logit(D) = log D - log(1 - D)`` with ``log D =
    LSE_j(log w_j + log sigmoid(C_j))`` and ``log(1 - D) = LSE_j(log w_j + log sigmoid(-C_j))``
    (``w`` sums to one), so the map is exact on all of R (the paper's code clips ``D`` to
    ``[1e-6 / 2, 1 - 1e-6 / 2]``, which bounds ``z`` by ``+-14.5``; Pyro computes ``logit(D)``
    directly, which overflows once ``D`` rounds to 1). The log-derivative is carried through the
    layers in log space as well (see ``_sigmoidal``), and every entry of every layer's Jacobian
    is positive, so ``z`` is increasing in ``x``; for ``x -> +-inf`` it is asymptotically linear
    with slope ``min a`` (DSF), hence onto R.

    Parameters
    ----------
    dim : int
    units : int, default 16
        ``K`` (Pyro's ``width`` default).
    n_layers : int, default 1
        1 for DSF, more for DDSF.
    hidden, order, hidden_degrees, activation : MADE options (see :class:`refflow.nn.MADE`)
    context_dim : int, optional
    zero_last : bool, default False
    rng : None, int or numpy.random.Generator

    Notes
    -----
    MADE outputs per coordinate, layer after layer: ``[a_raw (K) | w (K) | b (K) | u (d_in,
    if d_in > 1)]``; for DSF that is ``[a | w | b]``, Pyro's order. ``dense.w{l}``,
    ``dense.u{l}`` start at ``N(0, 0.01^2)`` (the paper's code: ``U(-1e-3, 1e-3)``).

    Log-det: ``l = log dz/dx``, the last layer's ``t'``. Density-direction pullback for
    ``(z_bar, l_bar)``: backwards through the formulas above, layer by layer, with the
    log-sum-exp rule ``d LSE / d v_k = softmax(v)_k``, ``d log sig(C) / dC = sig(-C)``,
    ``d log sig(-C) / dC = -sig(C)``, ``d log softplus(a_raw) / d a_raw = sig(a_raw) /
    softplus(a_raw)`` and the log-softmax rule ``v_bar = lv_bar - softmax(v) sum lv_bar``; per
    layer (``ld_bar = h'_bar - t'_bar``, ``le_bar = -h'_bar - t'_bar`` on ``log D``, ``log E``)::

        r_bar   = sum_m t'_bar_m rho_mj                      (rho = softmax_j(log W + r))
        C_bar   = (sum_m ld_bar_m delta_mj + r_bar) sig(-C) - (sum_m le_bar_m eps_mj + r_bar) sig(C)
        a_bar   = C_bar pre,  b_bar = C_bar,  pre_bar = C_bar a,  log a_bar = r_bar
        h_bar_i = sum_j pre_bar_j U_ji,   t_bar_i = sum_j r_bar_j kappa_ji

    with ``delta``, ``eps``, ``kappa`` the softmaxes of the LSEs defining ``log D``, ``log E``
    and ``q``. Sampling: the bracketed Newton iteration of :mod:`refflow.bijectors._monotone`
    from ``x = 0``, and its implicit-function pullback.

    Pyro's ``NeuralAutoregressive`` (the "IAF flavour") applies this map in the sampling
    direction; it is ``Inverse(NeuralAutoregressive(...))`` here, whose density direction Pyro
    cannot evaluate.

    References
    ----------
    Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", 2018, arXiv:1804.00779.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import NeuralAutoregressive
    >>> layer = NeuralAutoregressive(3, units=8, hidden=(8, 8), rng=0)
    >>> x = np.random.default_rng(1).normal(size=(4, 3))
    >>> z, log_det = layer.inverse(x)
    >>> x_back, log_det_back = layer.forward(z)
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12)), bool(np.allclose(log_det_back, -log_det))
    (True, True)
    """

    def __init__(self, dim, *, units=16, n_layers=1, hidden=(64, 64), order="natural",
                 hidden_degrees="cyclic", activation="relu", context_dim=None, zero_last=False,
                 rng=None):
        where = "NeuralAutoregressive"
        rng = check_rng(rng, f"{where}: rng")
        self.units = check_int(units, where, "units", minimum=1)
        self.n_layers = check_int(n_layers, where, "n_layers", minimum=1)
        layers, n_params = _sigmoidal_layout(self.units, self.n_layers)
        super().__init__(dim, n_params, hidden, order, hidden_degrees, activation, context_dim,
                         zero_last, rng)
        arrays = {}
        if self.n_layers > 1:
            for l, (d_in, d_out, _) in enumerate(layers):
                arrays[f"dense.w{l}"] = rng.normal(0.0, 0.01, size=(d_out, self.units))
                if d_in > 1:
                    arrays[f"dense.u{l}"] = rng.normal(0.0, 0.01, size=(self.units, d_in))
        self._params = type(self._params)(arrays)

    def __repr__(self):
        return (f"NeuralAutoregressive(dim={self.dim}, units={self.units}, "
                f"n_layers={self.n_layers}, hidden={tuple(self.made.hidden)})")

    def _config(self):
        return dict(self._made_config(), units=self.units, n_layers=self.n_layers)

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        units = check_int(args["units"], cls.__name__, "units", minimum=1)
        n_layers = check_int(args["n_layers"], cls.__name__, "n_layers", minimum=1)
        layers, n_params = _sigmoidal_layout(units, n_layers)
        own = {}
        if n_layers > 1:
            for l, (d_in, d_out, _) in enumerate(layers):
                own[f"dense.w{l}"] = (d_out, units)
                if d_in > 1:
                    own[f"dense.u{l}"] = (units, d_in)
        return cls._monotone_declaration(args, n_params, own)

    def _elements(self, x, theta, p, vjp):
        z, ell, res = _sigmoidal(x, theta, p, self.units, self.n_layers, vjp)
        if not vjp:
            return z, ell, None
        units, n_layers, n_params = self.units, self.n_layers, self.n_params

        def pullback(z_bar, ell_bar, need_params=True):
            return _sigmoidal_pullback(res, z_bar, ell_bar, units, n_layers, n_params,
                                       need_params)

        return z, ell, pullback

    def _scalar(self, i, x, theta_i, p):
        z, ell, _ = _sigmoidal(x, theta_i, p, self.units, self.n_layers, False)
        return z, np.exp(ell)

    def _solve(self, i, z_i, theta_i, p):
        return kernel_solve(SIGMOIDAL, z_i, _sigmoidal_rows(theta_i, p, self.units,
                                                           self.n_layers),
                            1.0, np.zeros_like(z_i), units=self.units, n_layers=self.n_layers,
                            where="NeuralAutoregressive.forward")
