r"""Block neural autoregressive flow (BNAF; De Cao, Titov & Aziz 2019).

One layer is a monotone network ``T`` from data to base, ``z = T(x)``, whose every linear map
is block lower triangular with positive diagonal blocks: coordinate ``i`` of ``z`` depends on
``x_1 .. x_i`` only and increases strictly in ``x_i``. The closed form runs in the *density*
direction (refflow's ``inverse``, ``x -> z``), as in the paper and in FlowJAX's
``block_neural_autoregressive_flow`` (whose layers' ``transform`` maps data to base; its flows
wrap them in ``Invert``); sampling (``forward``, ``z -> x``) is numerical, one scalar monotone
equation per coordinate, in order. Pyro's ``BlockAutoregressive`` runs the network the other
way (base to data, in its ``_call``): that is ``Inverse(BlockNeuralAutoregressive(...))`` here.

The network
-----------
With ``d = dim``, hidden factors ``(k_1, ..., k_{L-1})`` (Pyro's ``hidden_factors``; FlowJAX's
``depth`` and ``block_dim`` are ``(block_dim,) * depth``) and ``k_0 = k_L = 1``, layer ``l`` is
``a_l = h_{l-1} W_l^T + b_l``, ``h_l = f(a_l)`` (none after the last), ``h_0 = x``, ``F = a_L``,
with ``W_l`` of shape ``(d k_l, d k_{l-1})`` made of ``d x d`` blocks of ``k_l x k_{l-1}``:
zero above the block diagonal, positive on it. Weight normalisation (per row ``r``)::

    v_rc = phi(u_rc) on diagonal blocks,  u_rc below them,  0 above
    W_rc = s(g_r) v_rc / (||v_r|| + eps)

from the raw parameters ``w{l} = u`` (the full matrix is stored; entries above the diagonal
blocks are never read and get zero gradients), ``g{l} = g``, ``b{l} = b``. A conditional layer
adds ``c W_c^T`` (``context_weight``, no bias) to ``a_1``, as FlowJAX's ``cond_linear``.

================  ===================  ===========  ======  ======================================
parameterization  ``phi`` (diagonal)   ``s``        eps     source
================  ===================  ===========  ======  ======================================
``"flowjax"``     softplus             softplus     0       flowjax/bijections/
                                                            block_autoregressive_network.py and
                                                            paramax ``WeightNormalization``
``"paper"``       exp                  exp          0       De Cao et al.'s code (bnaf.py,
                                                            ``MaskedWeight``)
``"pyro"``        exp                  exp          1e-8    pyro/distributions/transforms/
                                                            block_autoregressive.py
================  ===================  ===========  ======  ======================================

Activations ``f``: ``"leaky_tanh"`` ``tanh(a) + 0.01 a`` (FlowJAX's default ``_LeakyTanh``,
which makes every coordinate's map onto the real line), ``"tanh"`` (the paper's and Pyro's
default), ``"sigmoid"``, ``"elu"`` and ``"leaky_relu"`` (slope 0.01) as Pyro's. With a bounded
activation and no residual each coordinate's range is a bounded interval: ``forward`` raises a
``ValueError`` for a ``z`` outside it.

Residual connections (the paper's ``res``): ``z = F(x)`` (None), ``z = x + F(x)``
(``"normal"``) or ``z = a F(x) + (1 - a) x`` with ``a = sigmoid(gate)`` (``"gated"``, the
paper's code). Pyro's gated layer computes ``a x + (1 - a) F``: its gate is ``-gate`` here.
Writing ``z = r1 x + r2 F`` covers all three: ``(r1, r2) = (0, 1), (1, 1), (1 - a, a)``.

Log-determinant: log-sum-exp over the diagonal blocks
-------------------------------------------------------
The Jacobian ``J = dz/dx`` is lower triangular with ``J_ii = r1 + r2 exp(l_i)``, where
``exp(l_i) = dF_i/dx_i = D_L^i S_{L-1}^i D_{L-1}^i ... S_1^i D_1^i`` is a product of the ``i``-th
diagonal blocks ``D_l^i`` (positive) and ``S_l^i = diag f'(a_l)`` over block ``i``. It is
evaluated in log space (the paper's eq. 11; FlowJAX's ``logmatmulexp``)::

    alpha_1 = log D_1^i[:, 0] + log f'(a_1^i)
    alpha_l = log f'(a_l^i) + LSE_j(log D_l^i[:, j] + alpha_{l-1}[j])     (l < L)
    l_i     = LSE_j(log D_L^i[0, j] + alpha_{L-1}[j])

with ``log D = log s(g_r) + log phi(u_rc) - log(||v_r|| + eps)`` read off the raw parameters
(never ``log`` of a rounded weight) and ``log f'`` in closed form (``log sech^2 a =
log 4 - 2|a| - 2 log1p(e^{-2|a|})``), so ``l_i`` stays finite where ``exp(l_i)`` underflows.
The log-sum-exps are computed as shifted matrix products (``exp(alpha - max alpha)`` times
``exp(log D - max log D)``), and exactly, entry by entry, for the rows where that product falls
below ``sqrt(tiny)``. Then::

    inverse:  log|det dz/dx| = sum_i psi(l_i),   psi(l) = l,  softplus(l),
                                                  softplus(l + gate) - softplus(gate)
    forward:  log|det dx/dz| = -sum_i psi(l_i(x))   at the solved x

Pullbacks
---------
*Inverse (closed form).* For cotangents ``z_bar`` and ``ld_bar``: ``l_bar_i = ld_bar psi'(l_i)``;
back through the log-sum-exps (softmax weights ``P_rj = exp(log D_rj + alpha_j - out_r)``)
``alpha_bar_{l-1} = P^T alpha_bar_l``, ``log D_bar += alpha_bar_l P`` (per block, summed over
rows), and ``log f'(a_l)`` passes ``alpha_bar_l (f''/f')(a_l)`` into ``a_l_bar`` (the network's
second derivative: ``-2 tanh a`` for tanh, ``1 - 2 sigmoid a`` for the sigmoid, ...). Then the
usual backward pass ``a_L_bar = r2 z_bar``, ``W_l_bar = a_l_bar^T h_{l-1}``,
``h_{l-1}_bar = a_l_bar W_l``, ``a_{l-1}_bar = h_{l-1}_bar f'(a_{l-1}) + (the log-det term)``,
``x_bar = h_0_bar + r1 z_bar``, ``c_bar = a_1_bar W_c``. Weight normalisation, with
``q_r = s_r / N_r``, ``N_r = ||v_r|| + eps``, ``L_r = sum_c logD_bar_rc``::

    A_r    = q_r sum_c W_bar_rc v_rc + L_r                  (the cotangent of log s_r)
    v_bar  = q_r W_bar_rc - A_r v_rc / (N_r ||v_r||)
    u_bar  = v_bar phi'(u) + logD_bar (log phi)'(u) on the diagonal blocks, v_bar below them
    g_bar  = A_r (log s)'(g_r)

and ``gate_bar = sum (F - x) a (1 - a) z_bar + ld_bar (sigmoid(l + gate) - sigmoid(gate))``.

*Forward (numerical).* ``x = T^{-1}(z)`` solves ``T(x; theta) = z``; by the implicit-function
theorem ``dx = J^{-1}(dz - (dT/dtheta) dtheta)``. The forward log-det is ``-LD(x; theta)``
with ``LD = sum_i psi(l_i)``. For cotangents ``x_bar`` and ``ld_bar``::

    g         = x_bar - ld_bar dLD/dx                  (the closed-form pullback with (0, -ld_bar))
    z_bar     = J^{-T} g                               (J lower triangular: back substitution)
    theta_bar = -(dT/dtheta)^T z_bar - ld_bar dLD/dtheta
              = the theta part of the closed-form pullback with (-z_bar, -ld_bar)

and likewise ``c_bar``. ``J`` comes from a forward-mode pass (tangents ``e_j`` through the
network); nothing is differentiated through the solver's iterations.

The numerical inverse
---------------------
:func:`refflow.kernels.bnaf.bnaf_inverse`: per row, coordinate ``i = 1 .. d`` in order, with
the earlier coordinates fixed, the scalar equation ``r1 t + r2 F_i(t) = z_i`` (strictly
increasing) is bracketed from ``t = 0`` (its Newton point, then doubling steps) and solved by
safeguarded Newton
(bisection whenever a step leaves the bracket or does not halve), to a few ulps: the residual
is at the rounding level of evaluating ``z_i``; worst case ~2,100 bracket steps and
``MAX_ITER = 2200`` refinement steps, typically ~8 evaluations. A root whose residual exceeds
``RESOLVE_ULPS = 64`` ulps of the evaluated terms' magnitude (the map jumps between adjacent
floats: saturated units behind very large weights) is refused with a ``ValueError``.

References
----------
N. De Cao, I. Titov, W. Aziz, "Block Neural Autoregressive Flow", UAI 2019, arXiv:1904.04676.
T. Salimans, D. P. Kingma, "Weight Normalization", NeurIPS 2016, arXiv:1602.07868.
"""

import math
import numbers

import numpy as np
from scipy.special import expit, log_expit

from .._math import softplus_inverse
from .._validation import as_batch, check_dim, check_rng
from ..io.spec import constructor_arguments, declaration
from ..kernels.bnaf import ACTIVATION_CODES, bnaf_inverse
from .base import Bijector

__all__ = ["BlockNeuralAutoregressive"]

#: name -> (diagonal map, row-scale map, eps in the norm)
PARAMETERIZATIONS = {
    "flowjax": ("softplus", "softplus", 0.0),
    "paper": ("exp", "exp", 0.0),
    "pyro": ("exp", "exp", 1e-8),
}
ACTIVATIONS = tuple(ACTIVATION_CODES)
RESIDUALS = (None, "normal", "gated")
#: The slope of ``"leaky_tanh"`` (FlowJAX's ``_LeakyTanh(0.01)``) and ``"leaky_relu"``
#: (torch's default, Pyro's ``LeakyReLUTransform``).
LEAKY_SLOPE = 0.01
_LN4 = math.log(4.0)
#: Rows per chunk of the forward-mode Jacobian (its tangents are (rows, width, dim)).
_JACOBIAN_ELEMENTS = 1 << 22


# ------------------------------------------------------------------------ scalar functions
def _log_softplus(u):
    """``log(softplus(u))`` without underflow: ``u - e^u / 2`` (error ``O(e^{2u})``) far left."""
    far = u < -30
    safe = np.where(far, 0, u)
    return np.where(far, u - np.exp(np.minimum(u, 0)) / 2, np.log(np.logaddexp(0, safe)))


def _positive(kind, u):
    """``(v, log v, dv/du, dlog v/du)`` for ``v = exp(u)`` or ``softplus(u)``."""
    if kind == "exp":
        v = np.exp(u)
        return v, u, v, np.ones_like(u)
    log_v = _log_softplus(u)
    return np.logaddexp(0, u).astype(u.dtype), log_v, expit(u), np.exp(log_expit(u) - log_v)


def _activation(name, a):
    """``(f(a), f'(a), log f'(a), f''(a) / f'(a))``, each finite for every finite ``a``."""
    dtype = a.dtype.type
    if name in ("tanh", "leaky_tanh"):
        t = np.tanh(a)
        e = np.exp(-2 * np.abs(a))
        sech2 = 4 * e / (1 + e) ** 2
        if name == "tanh":
            log_sech2 = dtype(_LN4) - 2 * np.abs(a) - 2 * np.log1p(e)
            return t, sech2, log_sech2, -2 * t
        slope = dtype(LEAKY_SLOPE)
        d = sech2 + slope          # >= 0.01: its log needs no log-space care
        return t + slope * a, d, np.log(d), -2 * t * sech2 / d
    if name == "sigmoid":
        e = np.exp(-np.abs(a))
        s = 1 / (1 + e)
        h = np.where(a >= 0, s, e * s)
        log_d = -np.abs(a) - 2 * np.log1p(e)
        return h, e * s * s, log_d, -np.tanh(a / 2)
    if name == "elu":
        neg = np.minimum(a, 0)
        pos = a > 0
        return (np.where(pos, a, np.expm1(neg)), np.where(pos, dtype(1), np.exp(neg)), neg,
                np.where(pos, dtype(0), dtype(1)))
    slope = dtype(LEAKY_SLOPE)
    pos = a >= 0
    return (np.where(pos, a, slope * a), np.where(pos, dtype(1), slope),
            np.where(pos, dtype(0), np.log(slope)), np.zeros_like(a))


def _row_norm(v):
    """Euclidean norm of every row, scaled by the row's largest entry (no overflow)."""
    m = np.abs(v).max(axis=1)
    m = np.where(m > 0, m, 1)
    return m * np.sqrt(((v / m[:, None]) ** 2).sum(axis=1))


# ---------------------------------------------------------------------- log-sum-exp products
def _lse_matvec(log_d, alpha):
    """``out[n, i, r] = log sum_j exp(log_d[i, r, j] + alpha[n, i, j])`` and its residuals.

    Shifted products ``exp(alpha - m) @ exp(log_d - M)^T``; rows ``(n, i)`` where a sum falls
    below ``sqrt(tiny)`` (the shifts did not align) are recomputed exactly.
    """
    dtype = alpha.dtype
    big_m = log_d.max(axis=2, keepdims=True)                       # (d, kr, 1)
    exp_d = np.exp(log_d - big_m)                                  # (d, kr, kj)
    m = alpha.max(axis=2, keepdims=True)                           # (n, d, 1)
    e = np.exp(alpha - m)                                          # (n, d, kj)
    s = np.matmul(e.transpose(1, 0, 2), exp_d.transpose(0, 2, 1)).transpose(1, 0, 2)
    tiny = np.sqrt(np.finfo(dtype).tiny)
    bad = (s < tiny).any(axis=2)                                   # (n, d)
    with np.errstate(divide="ignore"):
        out = np.log(s) + m + big_m[None, :, :, 0]
    rows, blocks = np.nonzero(bad)
    if rows.size:
        terms = log_d[blocks] + alpha[rows, blocks][:, None, :]     # (b, kr, kj)
        top = terms.max(axis=2, keepdims=True)
        out[rows, blocks] = (top + np.log(np.exp(terms - top).sum(axis=2, keepdims=True)))[..., 0]
    return out, (log_d, alpha, exp_d, e, s, out, rows, blocks)


def _lse_matvec_back(res, out_bar):
    """``(alpha_bar, log_d_bar)`` for :func:`_lse_matvec`: softmax weights ``P = exp(log_d +
    alpha - out)``, ``alpha_bar = sum_r out_bar_r P_rj``, ``log_d_bar = sum_n out_bar_r P_rj``."""
    log_d, alpha, exp_d, e, s, out, rows, blocks = res
    with np.errstate(divide="ignore", invalid="ignore"):
        q = out_bar / s                                            # (n, d, kr)
    if rows.size:
        q[rows, blocks] = 0
    qt = q.transpose(1, 0, 2)                                      # (d, n, kr)
    alpha_bar = np.matmul(qt, exp_d).transpose(1, 0, 2) * e        # (d, n, kj) -> (n, d, kj)
    log_d_bar = np.matmul(qt.transpose(0, 2, 1), e.transpose(1, 0, 2)) * exp_d
    if rows.size:
        p = np.exp(log_d[blocks] + alpha[rows, blocks][:, None, :] - out[rows, blocks][:, :, None])
        contrib = out_bar[rows, blocks][:, :, None] * p             # (b, kr, kj)
        alpha_bar[rows, blocks] = contrib.sum(axis=1)
        np.add.at(log_d_bar, blocks, contrib)
    return alpha_bar, log_d_bar


# ------------------------------------------------------------------------------ the class
class BlockNeuralAutoregressive(Bijector):
    r"""Block neural autoregressive layer: closed form ``z = T(x)``, numerical ``x = T^{-1}(z)``.

    Parameters
    ----------
    dim : int
        Event size ``d``.
    hidden_factors : sequence of int, default (8,)
        Hidden layer ``l`` has ``d k_l`` units in ``d`` blocks (Pyro's ``hidden_factors``; the
        default is FlowJAX's ``nn_depth=1, nn_block_dim=8``; Pyro's default is ``(8, 8)``).
        ``()`` gives a single lower-triangular linear layer with a positive diagonal (FlowJAX's
        ``depth=0``).
    activation : {"leaky_tanh", "tanh", "sigmoid", "elu", "leaky_relu"}, default "leaky_tanh"
        See the module docstring; FlowJAX's default, then the paper's and Pyro's options.
    parameterization : {"flowjax", "paper", "pyro"}, default "flowjax"
        The diagonal and row-scale maps and the norm's ``eps`` (module docstring table); also
        selects the peer's random initialisation.
    residual : {None, "normal", "gated"}, default None
        The paper's residual connections (``gate`` parameter of shape ``(1,)`` for "gated").
    context_dim : int, optional
        A conditional layer: ``a_1 += context @ context_weight.T`` (FlowJAX's ``cond_linear``,
        no bias; Pyro's layer has no context).
    rng : None, int or numpy.random.Generator
        Initialisation. ``"flowjax"``: equinox's ``Linear`` (weights and biases
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), row scales set so ``s(g_r) = 1/||v_r||``
        (paramax's ``WeightNormalization``). ``"paper"``/``"pyro"``: Xavier-uniform per block
        row (``fan_in = (i + 1) d_in/d``), ``g = log U(0, 1)``, biases ``U(-1/sqrt(d_out),
        1/sqrt(d_out))``, ``gate ~ N(0, 1)``. The unused entries above the diagonal blocks are
        zero.

    Attributes
    ----------
    params : ParamDict
        ``w{l}`` ``(d k_{l+1}, d k_l)``, ``g{l}`` and ``b{l}`` ``(d k_{l+1},)`` for the
        ``L = len(hidden_factors) + 1`` layers (``l = 0 .. L-1``), ``context_weight``
        ``(d k_1, context_dim)`` if conditional, ``gate`` ``(1,)`` if gated.

    Raises
    ------
    ValueError
        For a bad option; in ``forward``, for a ``z`` outside the range of a bounded network
        (the message names the row and coordinate).

    Notes
    -----
    Formulas, both log-dets and both pullbacks are in the module docstring
    (:mod:`refflow.bijectors.block_neural`). ``inverse`` (``x -> z``) is one network pass;
    ``forward`` (``z -> x``) solves ``d`` scalar monotone equations per row (numba kernel
    :func:`refflow.kernels.bnaf.bnaf_inverse`) and then runs the closed form at the solution,
    so the two log-dets are exact negatives at matching points.

    References
    ----------
    N. De Cao, I. Titov, W. Aziz, "Block Neural Autoregressive Flow", UAI 2019,
    arXiv:1904.04676.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import BlockNeuralAutoregressive
    >>> layer = BlockNeuralAutoregressive(3, hidden_factors=(4,), rng=0)
    >>> x = np.random.default_rng(1).normal(size=(5, 3))
    >>> z, log_det = layer.inverse(x)                  # closed form, data -> base
    >>> x_back, log_det_fwd = layer.forward(z)          # numerical, coordinate by coordinate
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12))
    True
    >>> bool(np.allclose(log_det, -log_det_fwd))
    True
    >>> jac = layer.jacobian(x)                         # dz/dx, lower triangular
    >>> bool(np.allclose(np.linalg.slogdet(jac)[1], log_det))
    True
    """

    def __init__(self, dim, hidden_factors=(8,), *, activation="leaky_tanh",
                 parameterization="flowjax", residual=None, context_dim=None, rng=None):
        where = "BlockNeuralAutoregressive"
        dim = check_dim(dim, where)
        hidden_factors = _check_factors(hidden_factors, where)
        if not (isinstance(activation, str) and activation in ACTIVATIONS):
            raise ValueError(f"{where}: activation must be one of {list(ACTIVATIONS)}, got "
                             f"{activation!r}")
        if not (isinstance(parameterization, str) and parameterization in PARAMETERIZATIONS):
            raise ValueError(f"{where}: parameterization must be one of "
                             f"{sorted(PARAMETERIZATIONS)}, got {parameterization!r}")
        if residual not in RESIDUALS or not (residual is None or isinstance(residual, str)):
            raise ValueError(f"{where}: residual must be None, 'normal' or 'gated', got "
                             f"{residual!r}")
        if context_dim is not None:
            context_dim = check_dim(context_dim, where, "context_dim")
        rng = check_rng(rng, f"{where}: rng")
        blocks = (1, *hidden_factors, 1)
        params = _initial_params(dim, blocks, parameterization, residual, context_dim, rng)
        super().__init__(dim, params=params)
        self.hidden_factors = hidden_factors
        self.activation = activation
        self.parameterization = parameterization
        self.residual = residual
        self.context_dim = context_dim
        self._blocks = blocks

    def __repr__(self):
        return (f"BlockNeuralAutoregressive(dim={self.dim}, hidden_factors="
                f"{self.hidden_factors}, activation={self.activation!r}, parameterization="
                f"{self.parameterization!r}, residual={self.residual!r}, context_dim="
                f"{self.context_dim})")

    def _config(self):
        return {"dim": self.dim, "hidden_factors": list(self.hidden_factors),
                "activation": self.activation, "parameterization": self.parameterization,
                "residual": self.residual, "context_dim": self.context_dim}

    @classmethod
    def _declare(cls, config):
        # the arrays of _initial_params, in its order
        args = constructor_arguments(cls, config)
        where = "BlockNeuralAutoregressive"
        d = check_dim(args["dim"], where)
        blocks = (1, *_check_factors(args["hidden_factors"], where), 1)
        context_dim = args["context_dim"]
        if context_dim is not None:
            context_dim = check_dim(context_dim, where, "context_dim")
        params = {}
        for l in range(len(blocks) - 1):
            n_out, n_in = d * blocks[l + 1], d * blocks[l]
            params[f"w{l}"], params[f"g{l}"], params[f"b{l}"] = (n_out, n_in), (n_out,), (n_out,)
            if l == 0 and context_dim is not None:
                params["context_weight"] = (n_out, context_dim)
        if args["residual"] == "gated":
            params["gate"] = (1,)
        return declaration(params)

    # ------------------------------------------------------------------------- state
    def _state(self, dtype):
        """Parameter copies in ``dtype``: weights, biases, log diagonal blocks, residual mix."""
        p = self._p(dtype)
        d, blocks = self.dim, self._blocks
        diag_map, scale_map, eps = PARAMETERIZATIONS[self.parameterization]
        eps = dtype.type(eps)
        layers = []
        for l in range(len(blocks) - 1):
            k_out, k_in = blocks[l + 1], blocks[l]
            diag, off = _masks(d, k_out, k_in)
            u, g = p[f"w{l}"], p[f"g{l}"]
            pv, log_pv, dpv, dlog_pv = _positive(diag_map, u)
            v = np.where(diag, pv, np.where(off, u, 0)).astype(dtype)
            s, log_s, _, dlog_s = _positive(scale_map, g)
            nv = _row_norm(v)
            norm = nv + eps
            q = s / norm
            w = q[:, None] * v
            log_w = (log_s - np.log(norm))[:, None] + log_pv
            log_d = _diagonal_blocks(log_w, d, k_out, k_in)
            layers.append({"w": w, "b": p[f"b{l}"], "v": v, "q": q, "nv": nv, "norm": norm,
                           "diag": diag, "off": off, "dpv": dpv, "dlog_pv": dlog_pv,
                           "dlog_s": dlog_s, "log_d": log_d, "k_out": k_out, "k_in": k_in})
        gate = p.get("gate")
        if self.residual is None:
            r1, r2 = dtype.type(0), dtype.type(1)
        elif self.residual == "normal":
            r1, r2 = dtype.type(1), dtype.type(1)
        else:
            r1, r2 = expit(-gate[0]), expit(gate[0])
        return {"layers": layers, "context_weight": p.get("context_weight"), "gate": gate,
                "r1": r1, "r2": r2}

    # -------------------------------------------------------------------- closed form
    def _closed(self, x, context, st, vjp):
        """``z = T(x)``, ``LD = log|det dz/dx|`` and, with ``vjp``, the pullback
        ``(z_bar, ld_bar) -> (x_bar, grads, context_bar)`` and the Jacobian's residuals."""
        layers, n, d = st["layers"], x.shape[0], self.dim
        n_layers = len(layers)
        hs, dhs, dlogs, lse = [x], [], [], []
        alpha = None
        for l, lay in enumerate(layers):
            a = hs[-1] @ lay["w"].T + lay["b"]
            if l == 0 and context is not None:
                a = a + context @ st["context_weight"].T
            if l == n_layers - 1:
                break
            h, dh, log_dh, dlog_dh = _activation(self.activation, a)
            hs.append(h)
            dhs.append(dh)
            dlogs.append(dlog_dh)
            log_s = log_dh.reshape(n, d, lay["k_out"])
            if l == 0:
                alpha = lay["log_d"][None, :, :, 0] + log_s
            else:
                beta, res = _lse_matvec(lay["log_d"], alpha)
                lse.append(res)
                alpha = beta + log_s
        f = a
        if n_layers == 1:
            ell = np.broadcast_to(layers[0]["log_d"][:, 0, 0], (n, d)).copy()
        else:
            beta, res = _lse_matvec(layers[-1]["log_d"], alpha)
            lse.append(res)
            ell = beta[:, :, 0]
        r1, r2 = st["r1"], st["r2"]
        if self.residual is None:
            z, ld_i = f, ell
        elif self.residual == "normal":
            z, ld_i = x + f, np.logaddexp(0, ell)
        else:
            gate = st["gate"][0]
            z = r2 * f + r1 * x
            ld_i = np.logaddexp(log_expit(-gate), log_expit(gate) + ell)
        z = np.ascontiguousarray(z, dtype=x.dtype)
        log_det = ld_i.sum(axis=1).astype(x.dtype)
        if not vjp:
            return z, log_det, None, None
        residuals = {"dhs": dhs, "layers": layers, "r1": r1, "r2": r2}

        def pullback(z_bar, log_det_bar):
            ld_bar = log_det_bar[:, None]
            grads = {}
            if self.residual is None:
                ell_bar = np.broadcast_to(ld_bar, (n, d))
            elif self.residual == "normal":
                ell_bar = ld_bar * expit(ell)
            else:
                gate = st["gate"][0]
                ell_bar = ld_bar * expit(ell + gate)
                gate_bar = (ld_bar * (expit(ell + gate) - expit(gate))).sum() \
                    + (z_bar * (f - x)).sum() * (r1 * r2)
                grads["gate"] = np.array([gate_bar])
            # back through the log-space chain of diagonal blocks
            log_d_bars = [None] * n_layers
            extra = [None] * (n_layers - 1)    # d log f'(a_l) / d a_l contributions
            if n_layers == 1:
                log_d_bars[0] = np.asarray(ell_bar.sum(axis=0))[:, None, None]
            else:
                alpha_bar, log_d_bars[-1] = _lse_matvec_back(lse[-1], ell_bar[:, :, None])
                for l in range(n_layers - 2, -1, -1):
                    extra[l] = alpha_bar.reshape(dlogs[l].shape) * dlogs[l]
                    if l == 0:
                        log_d_bars[0] = alpha_bar.sum(axis=0)[:, :, None]
                    else:
                        alpha_bar, log_d_bars[l] = _lse_matvec_back(lse[l - 1], alpha_bar)
            # the network's backward pass
            g = z_bar * r2
            context_bar = None
            for l in range(n_layers - 1, -1, -1):
                lay = layers[l]
                w_bar = g.T @ hs[l]
                grads[f"b{l}"] = g.sum(axis=0)
                if l == 0 and context is not None:
                    grads["context_weight"] = g.T @ context
                    context_bar = g @ st["context_weight"]
                h_bar = g @ lay["w"]
                if l > 0:
                    g = h_bar * dhs[l - 1] + extra[l - 1]
                grads[f"w{l}"], grads[f"g{l}"] = _weight_norm_back(lay, w_bar, log_d_bars[l], d)
            x_bar = h_bar + r1 * z_bar
            return x_bar, grads, context_bar

        return z, log_det, pullback, residuals

    def _jacobian(self, res, n):
        """``dz/dx`` of shape ``(n, d, d)`` by forward mode (tangents ``e_j``), in row chunks."""
        layers, dhs, d = res["layers"], res["dhs"], self.dim
        dtype = layers[0]["w"].dtype
        width = max(lay["w"].shape[0] for lay in layers)
        chunk = max(1, _JACOBIAN_ELEMENTS // (width * d))
        jac = np.empty((n, d, d), dtype=dtype)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            t = np.broadcast_to(layers[0]["w"], (stop - start, *layers[0]["w"].shape))
            for l in range(1, len(layers)):
                t = np.matmul(layers[l]["w"], dhs[l - 1][start:stop, :, None] * t)
            jac[start:stop] = res["r2"] * t
        idx = np.arange(d)
        jac[:, idx, idx] += res["r1"]
        return jac

    def jacobian(self, x, context=None):
        """The Jacobian ``dz/dx`` of the closed-form map, shape ``(batch, dim, dim)``.

        Lower triangular (exactly: the masked weights are zero), computed by forward-mode
        products through the network, independently of the log-space log-det.
        """
        where = f"{self._name()}.jacobian"
        x2, was_1d = as_batch(x, self.dim, where)
        c2, _ = self._check_context(context, x2.shape[0], where)
        if c2 is not None and c2.dtype != x2.dtype:
            c2 = c2.astype(x2.dtype)
        st = self._state(x2.dtype)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _, _, _, res = self._closed(x2, c2, st, True)
            jac = self._jacobian(res, x2.shape[0])
        return jac[0] if was_1d else jac

    # -------------------------------------------------------------------------- hooks
    def _inverse_pass(self, x, context, vjp):
        z, log_det, pullback, _ = self._closed(x, context, self._state(x.dtype), vjp)
        return z, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        st = self._state(z.dtype)
        x = self._solve(z, context, st)
        _, ld, closed_pullback, res = self._closed(x, context, st, vjp)
        log_det = -ld
        if not vjp:
            return x, log_det, None
        n = z.shape[0]
        jac = self._jacobian(res, n)

        def pullback(x_bar, log_det_bar):
            zeros = np.zeros_like(x_bar)
            g = x_bar + closed_pullback(zeros, -log_det_bar)[0]
            z_bar = _solve_transposed_lower(jac, g)
            _, grads, context_bar = closed_pullback(-z_bar, -log_det_bar)
            return z_bar, grads, context_bar

        return x, log_det, pullback

    def _solve(self, z, context, st):
        """``x = T^{-1}(z)`` with the kernel; a ``ValueError`` for ``z`` outside the range."""
        dtype = z.dtype
        layers = st["layers"]
        w = np.concatenate([lay["w"].ravel() for lay in layers]).astype(dtype)
        b = np.concatenate([lay["b"] for lay in layers]).astype(dtype)
        b0 = layers[0]["b"][None, :]
        if context is not None:
            b0 = layers[0]["b"] + context @ st["context_weight"].T
        b0 = np.ascontiguousarray(b0, dtype=dtype)
        widths = np.array([self.dim] + [lay["w"].shape[0] for lay in layers], dtype=np.int64)
        x = np.empty_like(z)
        status = np.zeros(z.shape[0], dtype=np.int64)
        big = dtype.type(np.finfo(dtype).max / 4)
        bnaf_inverse(z, w, b, b0, widths, ACTIVATION_CODES[self.activation],
                     dtype.type(st["r1"]), dtype.type(st["r2"]), big, x, status)
        if (status > 0).any():
            row = int(np.argmax(status > 0))
            i = int(status[row]) - 1
            raise self._domain_error(
                "forward", f"z[{row}, {i}] = {float(z[row, i])!r} is outside the range of the "
                f"network's coordinate {i} (activation {self.activation!r} with residual "
                f"{self.residual!r} bounds it); {int((status != 0).sum())} of {z.shape[0]} rows "
                f"cannot be inverted")
        if (status < 0).any():
            row = int(np.argmax(status < 0))
            i = -int(status[row]) - 1
            raise self._domain_error(
                "forward", f"z[{row}, {i}] = {float(z[row, i])!r} has no preimage in {dtype}: "
                f"coordinate {i} of the network jumps past it between adjacent floats (units "
                f"saturated behind very large weights); {int((status != 0).sum())} of "
                f"{z.shape[0]} rows cannot be inverted")
        return x


# ------------------------------------------------------------------------------- helpers
def _check_factors(hidden_factors, where):
    if isinstance(hidden_factors, (str, bytes)) or not hasattr(hidden_factors, "__iter__"):
        raise ValueError(f"{where}: hidden_factors must be a sequence of positive integers, got "
                         f"{hidden_factors!r}")
    out = []
    for k in hidden_factors:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"{where}: hidden_factors must be a sequence of positive integers, "
                             f"got {list(hidden_factors)!r}")
        out.append(int(k))
    return tuple(out)


def _masks(d, k_out, k_in):
    """Boolean ``(d k_out, d k_in)`` masks of the diagonal blocks and the blocks below them."""
    rb = np.arange(d * k_out) // k_out
    cb = np.arange(d * k_in) // k_in
    return rb[:, None] == cb[None, :], rb[:, None] > cb[None, :]


def _diagonal_blocks(m, d, k_out, k_in):
    """``(d, k_out, k_in)``: the diagonal blocks of a ``(d k_out, d k_in)`` matrix."""
    idx = np.arange(d)
    return m.reshape(d, k_out, d, k_in)[idx, :, idx, :]


def _weight_norm_back(lay, w_bar, log_d_bar, d):
    """Raw-parameter cotangents ``(u_bar, g_bar)`` from those of ``W`` and of its log diagonal
    blocks (module docstring, "Pullbacks")."""
    k_out, k_in = lay["k_out"], lay["k_in"]
    log_w_bar = np.zeros((d, k_out, d, k_in), dtype=w_bar.dtype)
    idx = np.arange(d)
    log_w_bar[idx, :, idx, :] = log_d_bar
    log_w_bar = log_w_bar.reshape(d * k_out, d * k_in)
    v, q, nv, norm = lay["v"], lay["q"], lay["nv"], lay["norm"]
    a = q * (w_bar * v).sum(axis=1) + log_w_bar.sum(axis=1)
    v_bar = q[:, None] * w_bar - (a / (norm * nv))[:, None] * v
    u_bar = np.where(lay["diag"], v_bar * lay["dpv"] + log_w_bar * lay["dlog_pv"],
                     np.where(lay["off"], v_bar, 0))
    return u_bar, a * lay["dlog_s"]


def _solve_transposed_lower(jac, g):
    """``y`` with ``J^T y = g`` per row, ``J`` lower triangular ``(n, d, d)``: back substitution."""
    d = jac.shape[1]
    y = np.empty_like(g)
    for i in range(d - 1, -1, -1):
        rest = np.einsum("nj,nj->n", jac[:, i + 1:, i], y[:, i + 1:])
        y[:, i] = (g[:, i] - rest) / jac[:, i, i]
    return y


def _initial_params(d, blocks, parameterization, residual, context_dim, rng):
    """The peers' initialisations (class docstring); entries above the diagonal blocks are 0."""
    diag_map, _, _ = PARAMETERIZATIONS[parameterization]
    params = {}
    for l in range(len(blocks) - 1):
        k_out, k_in = blocks[l + 1], blocks[l]
        n_out, n_in = d * k_out, d * k_in
        diag, off = _masks(d, k_out, k_in)
        if parameterization == "flowjax":
            bound = 1.0 / math.sqrt(n_in)
            u = rng.uniform(-bound, bound, size=(n_out, n_in))
            b = rng.uniform(-bound, bound, size=n_out)
        else:
            u = np.zeros((n_out, n_in))
            for i in range(d):
                fan_in, fan_out = (i + 1) * k_in, k_out
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                u[i * k_out:(i + 1) * k_out, :(i + 1) * k_in] = rng.uniform(
                    -bound, bound, size=(k_out, (i + 1) * k_in))
            b = rng.uniform(-1.0 / math.sqrt(n_out), 1.0 / math.sqrt(n_out), size=n_out)
        u = np.where(diag | off, u, 0.0)
        if parameterization == "flowjax":
            v, *_ = _positive(diag_map, u)
            v = np.where(diag, v, u)
            g = softplus_inverse(1.0 / _row_norm(v))
        else:
            g = np.log(rng.uniform(size=n_out))
        params[f"w{l}"], params[f"g{l}"], params[f"b{l}"] = u, g, b
        if l == 0 and context_dim is not None:
            bound = 1.0 / math.sqrt(context_dim)
            params["context_weight"] = rng.uniform(-bound, bound, size=(n_out, context_dim))
    if residual == "gated":
        params["gate"] = rng.normal(size=1)
    return params
