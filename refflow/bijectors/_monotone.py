r"""Shared machinery of the masked autoregressive layers with a scalar monotone transformer.

A MADE (Germain et al. 2015) gives every coordinate ``i`` the parameters ``theta_i(x_<i)`` of
an increasing scalar map ``f(.; theta_i)`` (the *transformer*); the layer applies it in the
**density direction**, as zuko's NAF / UNAF / SOSPF / BPF do::

    inverse (x -> z, one MADE pass)     z_i = f(x_i; theta_i(x_<i)),   log_det = sum_i l_i,
                                        l_i = log f'(x_i; theta_i)
    forward (z -> x, sampling)          x_i = f^{-1}(z_i; theta_i(x_<i)) in degree order,
                                        log_det = -sum_i l_i  (at the x found)

Pyro's "IAF-flavoured" layers (``NeuralAutoregressive``, ``Polynomial``) put the same
transformer in the sampling direction: they are ``Inverse(layer)`` here.

The transformer may also read parameters of the layer itself (the monotone networks' weights),
called the layer's *transformer parameters* (``params`` keys without the ``made.`` prefix).

Numerical inverse
-----------------
Row by row, independent of the other rows (:mod:`refflow.kernels.monotone`): a bracket
``f(lo) < z < f(hi)`` is found by expanding from ``x = 0`` (first step 1.5 times the Newton
step, then doubling), or is known (Bernstein: ``[-B, B]``); a safeguarded Newton iteration
(``rtsafe``: a Newton step only when it stays strictly inside the bracket and at least halves
the step before last, or is within the residual's rounding noise, 64 ulps; otherwise
bisection) shrinks it until the last step is at most four ulps of ``x`` or the bracket holds
two adjacent floats. So ``f(x)`` equals ``z`` to the rounding of ``f`` itself, and ``x`` is
within a few ulps plus that rounding over ``f'(x)`` (the map's own conditioning). The density
pass that then computes the log-det at ``x`` must give back ``z`` to 1e-3 relative, or the pass
raises: where a map is too flat to be evaluated at the solution (slopes ~1e-60 after
saturated sigmoids), ``x`` would otherwise be silently wrong. Worst case: ~1100 doublings before ``x`` would overflow (then a ``ValueError``
naming the layer) and ~2100 bisections in float64 (``2^1024`` down to subnormal spacings;
~280 in float32); typically 1-3 expansion steps and 4-7 Newton steps. The sigmoidal,
polynomial and Bernstein transformers solve in the numba kernel ``monotone_solve`` (its NumPy
twin on the reference path ``monotone`` of :func:`refflow.kernels.fast_paths`); the
network transformers (batched products) in its vectorised twin :func:`solve_increasing`, with
every row evaluated at every step so that each row's result does not depend on the others.

Pullbacks
---------
Density direction: the transformer's pullback gives ``x_bar`` (direct part), ``theta_bar`` and
the transformer parameters' cotangents; MADE's pullback adds its ``x_bar`` part and gives its
weights' cotangents.

Sampling direction (implicit-function theorem): with ``f' = df/dx > 0``, ``f_theta``,
``r = dl/dx``, ``s = dl/dtheta`` at the solution, the elementwise map ``(z, theta) -> (x,
log_det_i = -l)`` has, for cotangents ``(lambda, g)``::

    x~ = lambda - g r,      z_bar = x~ / f',      theta_bar = -(x~ / f') f_theta - g s

i.e. ``theta_bar`` is the transformer's own pullback evaluated at ``(z_bar, l_bar) = (-x~ / f',
-g)``. With ``theta = MADE(x)``, ``x`` is the fixed point of ``x = f^{-1}(z; theta(x))``,
whose Jacobian is strictly triangular in the order, so the adjoint ``lambda = x_bar +
MADE_x^T theta_bar(lambda)`` is exact after at most ``dim`` steps
(:func:`refflow.bijectors.autoregressive.fixed_point_adjoint`). The pullback is linear in
``(z_bar, l_bar)`` row by row, so ``f_theta`` and ``s`` are read once from two transformer
pullbacks (unit cotangents) and every adjoint step costs one MADE pullback only; a last
transformer pullback at ``(-x~ / f', -g)`` gives the transformer parameters' cotangents. No
differentiation through the iterations anywhere.
"""

import numpy as np

from .._math import log_sigmoid, sigmoid, softplus
from .._validation import check_dim
from ..io.spec import declaration
from ..kernels import use_fast_paths
from ..kernels.monotone import monotone_solve, monotone_solve_numpy, solve_increasing
from ..nn import MADE
from ..params import ParamDict, prefixed
from .autoregressive import fixed_point_adjoint, made_declaration
from .base import Bijector

__all__ = ["MonotoneAutoregressive", "TransformerDomainError", "solve_increasing", "kernel_solve",
           "softplus", "log_sigmoid", "sigmoid", "logsumexp", "uniform_init"]

_FAILURES = {1: "the map is NaN", 2: "the target is beyond the map's range",
             3: "no convergence"}


# --------------------------------------------------------------------------- stable helpers
# softplus, sigmoid and log_sigmoid are refflow._math's (re-exported for the two layer modules)
def logsumexp(v, axis):
    """``(log sum_k e^{v_k}, softmax(v))`` along ``axis``; ``-inf`` entries contribute 0.

    The softmax is returned because every pullback of a log-sum-exp needs it.
    """
    m = np.max(v, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, v.dtype.type(0))
    e = np.exp(v - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return np.squeeze(np.log(s) + m, axis=axis), e / s


def uniform_init(rng, shape, fan_in):
    """torch's ``nn.Linear`` default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / np.sqrt(max(int(fan_in), 1))
    return rng.uniform(-bound, bound, size=shape)


def kernel_solve(kind, z, params, scale, x0, lo=None, hi=None, units=0, n_layers=0,
                 where="kernel_solve"):
    """``x`` with ``f(x; params) = z`` row by row, by :func:`refflow.kernels.monotone.monotone_solve`
    (its NumPy twin on the reference path: ``refflow.kernels.fast_paths(False,
    paths=["monotone"])``); ``ValueError`` naming ``where`` on failure."""
    dt = z.dtype.type
    m = z.shape[0]
    x = np.empty_like(z)
    status = np.zeros(m, dtype=np.int64)
    bracketed = lo is not None
    solve = monotone_solve if use_fast_paths("monotone") else monotone_solve_numpy
    solve(kind, z, np.ascontiguousarray(params, dtype=z.dtype), dt(scale), int(units),
          int(n_layers), np.ascontiguousarray(x0, dtype=z.dtype), lo if bracketed else z,
          hi if bracketed else z, bracketed, x, status)
    if status.any():
        row = int(np.flatnonzero(status)[0])
        raise ValueError(f"{where}: the numerical inverse failed at row {row} "
                         f"({_FAILURES[int(status[row])]} in {z.dtype})")
    return x


class TransformerDomainError(ValueError):
    """Raised by a transformer that cannot evaluate at some input; the layer's pass re-raises
    it as a ``ValueError`` naming the layer and the direction."""


# ----------------------------------------------------------------- the MADE (in one place)
# Every use of MADE's private passes by these layers is here, so that a change of MADE's
# internals is adapted in one place: its unchecked forward and pullback passes, and the
# degree-ordered incremental evaluation that the sampling direction runs.
def made_outputs(made, x, context):
    """MADE's output ``(n, dim, n_params)`` at validated ``x`` (and context)."""
    return made._forward(x, context)


def made_outputs_vjp(made, x, context):
    """``(out, pullback)``; ``pullback(out_bar) -> (x_bar, grads[, context_bar])``."""
    return made._vjp(x, context)


def made_solve_in_order(made, z, context, solve, sampling_order):
    """Fix the coordinates in degree order: ``x_i = solve(i, z_i, theta_i)``.

    ``solve(i, z_i, theta_i)`` gets coordinate ``i``, its targets ``(m,)`` and the conditioner's
    outputs ``(m, n_params)`` (final: they depend only on the coordinates already fixed). The
    conditioner's own ``_sample`` runs the passes: a MADE with the ``sampling`` fast path its
    degree-ordered incremental evaluation (each hidden unit once), otherwise (the reference,
    or another conditioner) ``dim`` sequential full passes. Both call back once per coordinate
    in degree order (``sampling_order``), for each row chunk, so the calls are counted to know
    the coordinate.
    """
    dim = made.dim
    calls = [0]

    def sample_coordinate(z_i, out_i):
        i = int(sampling_order[calls[0] % dim])
        calls[0] += 1
        return solve(i, z_i, out_i)

    return made._sample(z, context, sample_coordinate)[0]


# ------------------------------------------------------------------------------ the layer
class MonotoneAutoregressive(Bijector):
    """Base of the masked autoregressive layers with a scalar monotone transformer.

    Subclasses implement

    - ``_elements(x, theta, p, vjp) -> (z, l, pullback | None)``: the transformer on every
      coordinate, ``x`` ``(n, dim)``, ``theta`` ``(n, dim, n_params)`` (MADE's outputs), ``p``
      the transformer parameters (``self._p(dtype)``); ``z`` and ``l = log f'`` ``(n, dim)``;
      ``pullback(z_bar, l_bar, need_params=True) -> (x_bar, theta_bar, grads)`` with ``grads``
      keyed like ``self._params`` (empty when ``need_params`` is False);
    - ``_scalar(i, x, theta_i, p) -> (f, f')`` for coordinate ``i`` on ``(m,)`` points;
    - optionally ``_solve(i, z_i, theta_i, p)`` (default: :func:`solve_increasing` from
      ``_initial_guess``), and ``_whole_rows`` (True when ``_scalar`` runs batched products,
      so the solver always passes every row).
    """

    _whole_rows = False

    def _row_chunk(self):
        """Rows per chunk of the passes without residuals (None: one chunk); the network
        transformers bound their ``(dim, rows [x nodes], width)`` temporaries with it."""
        return None

    def _elements_chunked(self, x, theta, p):
        """``(z, l)`` of ``_elements`` without residuals, in balanced row chunks (each of at
        least ``_row_chunk()`` rows, so every batched product keeps a large row count)."""
        rows, n = self._row_chunk(), x.shape[0]
        if rows is None or n < 2 * rows:
            return self._elements(x, theta, p, False)[:2]
        bounds = np.linspace(0, n, n // rows + 1).astype(np.int64)
        z, ell = np.empty_like(x), np.empty_like(x)
        for a, b in zip(bounds[:-1], bounds[1:]):
            z[a:b], ell[a:b], _ = self._elements(x[a:b], theta[a:b], p, False)
        return z, ell

    def __init__(self, dim, n_params, hidden, order, hidden_degrees, activation, context_dim,
                 zero_last, rng, transformer_params=None):
        name = type(self).__name__
        dim = check_dim(dim, name)
        if context_dim is not None:
            context_dim = check_dim(context_dim, name, "context_dim")
        self.made = MADE(dim, hidden, n_params=n_params, order=order,
                         hidden_degrees=hidden_degrees, activation=activation,
                         context_features=context_dim or 0, zero_last=zero_last, rng=rng)
        super().__init__(dim, transformer_params)
        self.context_dim = context_dim
        self.n_params = n_params
        self._sampling_order = np.argsort(self.made.input_degrees, kind="stable")

    @property
    def params(self):
        """``made.*`` (the conditioner) and the transformer parameters (their own keys)."""
        flat = dict(prefixed([("made", self.made.params)]))
        flat.update(self._params)
        return ParamDict(flat, copy=False)

    @classmethod
    def _monotone_declaration(cls, args, n_params, own=None):
        """The arrays that constructor arguments ``args`` imply: the MADE's (``dim +
        context_dim`` inputs, the hidden widths, ``dim * n_params`` outputs), then the
        transformer's own ``own`` (key -> shape), in the order :attr:`params` lists them."""
        params = made_declaration(cls.__name__, args, n_params)
        params.update(own or {})
        return declaration(params)

    def _made_config(self):
        """The MADE's structure, with its order and (unless deterministic) hidden degrees
        written out, so that a random-order, random-degree layer is rebuilt identically."""
        made = self.made
        degrees = made.hidden_degrees
        if degrees not in ("cyclic", "equal"):
            degrees = [d.tolist() for d in made.hidden_degree_list]
        return {"dim": self.dim, "hidden": list(made.hidden), "order": made.order.tolist(),
                "hidden_degrees": degrees, "activation": made.activation,
                "context_dim": self.context_dim}

    # ------------------------------------------------------------------ subclass defaults
    def _initial_guess(self, i, z_i, theta_i, p):
        return np.zeros_like(z_i)

    def _solve(self, i, z_i, theta_i, p):
        return solve_increasing(
            lambda x, idx: self._scalar(i, x, theta_i[idx], p), z_i,
            self._initial_guess(i, z_i, theta_i, p), whole=self._whole_rows,
            where=f"{type(self).__name__}.forward")

    # ------------------------------------------------------------------ density direction
    def _grads(self, made_result, tgrads):
        grads = {f"made.{k}": g for k, g in made_result[1].items()}
        grads.update(tgrads)
        return grads

    def _inverse_pass(self, x, context, vjp):
        try:
            return self._density_pass(x, context, vjp)
        except TransformerDomainError as exc:
            raise self._domain_error("inverse", str(exc)) from None

    def _forward_pass(self, z, context, vjp):
        try:
            return self._sampling_pass(z, context, vjp)
        except TransformerDomainError as exc:
            raise self._domain_error("forward", str(exc)) from None

    def _density_pass(self, x, context, vjp):
        p = self._p(x.dtype)
        if not vjp:
            theta = made_outputs(self.made, x, context)
            z, ell = self._elements_chunked(x, theta, p)
            return z, ell.sum(axis=1), None
        theta, made_pullback = made_outputs_vjp(self.made, x, context)
        z, ell, elem_pullback = self._elements(x, theta, p, True)

        def pullback(z_bar, log_det_bar):
            ell_bar = np.broadcast_to(log_det_bar[:, None], z_bar.shape)
            x_bar, theta_bar, tgrads = elem_pullback(z_bar, ell_bar)
            made_result = made_pullback(theta_bar)
            context_bar = None if context is None else made_result[2]
            return x_bar + made_result[0], self._grads(made_result, tgrads), context_bar

        return z, ell.sum(axis=1), pullback

    # ----------------------------------------------------------------- sampling direction
    def _sample(self, z, context, p):
        return made_solve_in_order(
            self.made, z, context, lambda i, z_i, theta_i: self._solve(i, z_i, theta_i, p),
            self._sampling_order)

    #: The density pass at the solution must give back ``z`` to this (relative): far more than
    #: any rounding (a steep map with slope 1e6 misses by ~1e-9), far less than what a map too
    #: flat to evaluate at the solution gives (``f`` computed from terms ~1e60 that cancel).
    _RECOVERY = 1e-3

    def _check_recovered(self, z, z_back, x):
        """Raise ``TransformerDomainError`` where ``f(x)``, evaluated by the density pass at the
        solution, does not give back ``z``: the transformer could not be evaluated accurately
        there, so ``x`` would be silently wrong."""
        bad = np.abs(z_back - z) > self._RECOVERY * np.maximum(1, np.abs(z))
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise TransformerDomainError(
                f"the numerical inverse of coordinate {col} (row {row}) reached x = "
                f"{float(x[row, col]):.3g}, where the transformer is too flat to evaluate "
                f"accurately (f(x) = {float(z_back[row, col]):.6g} for z = "
                f"{float(z[row, col]):.6g})")

    @staticmethod
    def _implicit(lam, g, fprime, r, f_theta, s):
        """The elementwise sampling map's pullback by the implicit-function theorem.

        For ``x = f^{-1}(z; theta)`` and ``log_det_i = -l(x, theta)`` with cotangents
        ``(lam, g)``: ``x~ = lam - g r``, ``z_bar = x~ / f'`` and ``theta_bar = -z_bar f_theta
        - g s`` (``r = dl/dx``, ``s = dl/dtheta``, all at the solution).
        """
        z_bar = (lam - g * r) / fprime
        theta_bar = (-z_bar)[..., None] * f_theta - g[..., None] * s
        return z_bar, theta_bar

    def _sampling_pass(self, z, context, vjp):
        p = self._p(z.dtype)
        x = self._sample(z, context, p)
        # The log-det comes from one full density pass at x, the very computation of
        # inverse(x): forward and inverse log-dets are exact negatives bit for bit.
        if not vjp:
            theta = made_outputs(self.made, x, context)
            z_back, ell = self._elements_chunked(x, theta, p)
            self._check_recovered(z, z_back, x)
            return x, -ell.sum(axis=1), None
        theta, made_pullback = made_outputs_vjp(self.made, x, context)
        z_back, ell, elem_pullback = self._elements(x, theta, p, True)
        self._check_recovered(z, z_back, x)
        max_steps = self.dim

        def pullback(x_bar, log_det_bar):
            g = np.broadcast_to(log_det_bar[:, None], x_bar.shape)
            ones, zeros = np.ones_like(x_bar), np.zeros_like(x_bar)
            fprime, f_theta, _ = elem_pullback(ones, zeros, need_params=False)   # f', df/dtheta
            r, s, _ = elem_pullback(zeros, ones, need_params=False)              # dl/dx, dl/dtheta

            def step(lam):
                z_bar, theta_bar = self._implicit(lam, g, fprime, r, f_theta, s)
                return z_bar, made_pullback(theta_bar)

            # lambda = x_bar + MADE_x^T theta_bar(lambda): nilpotent, exact in <= dim steps
            _, z_bar, made_result = fixed_point_adjoint(x_bar, step, max_steps)
            _, _, tgrads = elem_pullback(-z_bar, -g)
            context_bar = None if context is None else made_result[2]
            return z_bar, self._grads(made_result, tgrads), context_bar

        return x, -ell.sum(axis=1), pullback
