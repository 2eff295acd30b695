r"""The four 2-D potentials of Rezende & Mohamed (2015), Table 1, as log-densities with gradients.

Each target is the unnormalised density ``p~(z) = exp(-U(z))`` of ``z = (z1, z2)``::

    U1(z) = 1/2 ((|z| - 2) / 0.4)^2
            - log( exp(-1/2 ((z1 - 2) / 0.6)^2) + exp(-1/2 ((z1 + 2) / 0.6)^2) )
    U2(z) = 1/2 ((z2 - w1(z)) / 0.4)^2
    U3(z) = -log( exp(-1/2 ((z2 - w1(z)) / 0.35)^2) + exp(-1/2 ((z2 - w1(z) + w2(z)) / 0.35)^2) )
    U4(z) = -log( exp(-1/2 ((z2 - w1(z)) / 0.4)^2) + exp(-1/2 ((z2 - w1(z) + w3(z)) / 0.35)^2) )

    w1(z) = sin(2 pi z1 / 4),   w2(z) = 3 exp(-1/2 ((z1 - 1) / 0.6)^2),
    w3(z) = 3 sigma((z1 - 1) / 0.3)

with ``sigma(t) = 1 / (1 + exp(-t))``. The two-bump terms are evaluated as ``logaddexp(a, b)`` and
differentiated with the softmax weights ``exp(a - lse)``, ``exp(b - lse)``; ``sigma`` and its
derivative ``sigma(t) sigma(-t)`` by ``scipy.special.expit``; ``|z|`` by ``hypot``. Nothing
overflows for ``|z|`` up to ~1e150.

The envelope
------------
``U1`` has finite mass, but ``U2``-``U4`` do not: for every ``z1`` the mass along ``z2`` is the
same constant (``0.4 sqrt(2 pi)``, ``2 * 0.35 sqrt(2 pi)``, ``(0.4 + 0.35) sqrt(2 pi)``), so
``exp(-U)`` integrates to infinity along ``z1``, and the reverse KL ``E_q[log q - log p~]`` is
unbounded below (a flow lowers it without limit by spreading along ``z1``). The paper's
Figure 3 shows every density on the square ``[-4, 4]^2``; common reimplementations either
evaluate the bare potentials on that square (they are fitted for a fixed number of steps, not to
convergence) or, as ``normflows``, multiply by a weak envelope ``exp(-1/2 (|z|_4 / (20 s))^4)``.

Here the default ``envelope="box"`` multiplies ``exp(-U)`` by the soft box

    E(z1) = exp(-1/2 (max(|z1| - bound, 0) / width)^2),     bound = 4, width = 0.5,

so the target equals the paper's ``exp(-U)`` *exactly* on the plotted band ``|z1| <= 4`` and falls
off like a Gaussian outside it (its log is C^1, with the second derivative jumping at
``|z1| = bound``). Then every target has finite mass, with the closed forms

    Z_U2 = 0.4 sqrt(2 pi) L,   Z_U3 = 0.7 sqrt(2 pi) L,   Z_U4 = 0.75 sqrt(2 pi) L,
    L = int E(z1) dz1 = 2 bound + width sqrt(2 pi),

(the ``z2``-integral does not depend on ``z1``) and ``Z_U1`` by quadrature.
``envelope=None`` gives the bare ``-U`` (improper for ``U2``-``U4``).

References
----------
Rezende, Mohamed, "Variational Inference with Normalizing Flows", ICML 2015, arXiv:1505.05770
(Table 1, Figure 3).
"""

import math

import numpy as np
from scipy.special import expit

from .._validation import as_batch, check_positive

__all__ = ["POTENTIALS", "rezende_potential", "RezendePotential"]

#: Names of the potentials, as in Table 1 of Rezende & Mohamed (2015).
POTENTIALS = ("U1", "U2", "U3", "U4")

_ENVELOPES = ("box", None)
_HALF_PI = 0.5 * math.pi
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _lse2(a, b):
    """``log(e^a + e^b)`` and the weights ``e^a / (e^a + e^b)``, ``e^b / (e^a + e^b)``."""
    lse = np.logaddexp(a, b)
    return lse, np.exp(a - lse), np.exp(b - lse)


def _w1(z1):
    # w1 = sin(2 pi z1 / 4); w1' = (pi / 2) cos(pi z1 / 2)
    t = _HALF_PI * z1
    return np.sin(t), _HALF_PI * np.cos(t)


def _u1(z1, z2):
    """``-U1`` and its gradient."""
    r = np.hypot(z1, z2)
    ring = -0.5 * ((r - 2.0) / 0.4) ** 2
    # d ring / dz = -(r - 2) / 0.16 * z / r; at the origin (a cone point, where the density is
    # e^-12.5 of its maximum) the subgradient with dr/dz = 0 is used.
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(r > 0.0, -(r - 2.0) / (0.16 * r), 0.0)
    a = -0.5 * ((z1 - 2.0) / 0.6) ** 2
    b = -0.5 * ((z1 + 2.0) / 0.6) ** 2
    lse, wa, wb = _lse2(a, b)
    # d lse / dz1 = wa da/dz1 + wb db/dz1, da/dz1 = -(z1 - 2) / 0.36, db/dz1 = -(z1 + 2) / 0.36
    d_lse = -(wa * (z1 - 2.0) + wb * (z1 + 2.0)) / 0.36
    return ring + lse, factor * z1 + d_lse, factor * z2


def _u2(z1, z2):
    """``-U2`` and its gradient."""
    w1, dw1 = _w1(z1)
    s = (z2 - w1) / 0.4
    # d/dz2 (-s^2 / 2) = -s / 0.4; d/dz1 = s w1' / 0.4
    return -0.5 * s * s, s * dw1 / 0.4, -s / 0.4


def _two_bumps(z2, w1, dw1, shift, dshift, sa, sb):
    """``log(exp(-ra^2/2) + exp(-rb^2/2))``, ``ra = (z2 - w1)/sa``, ``rb = (z2 - w1 + shift)/sb``,
    with its gradient (``shift`` a function of ``z1`` with derivative ``dshift``)."""
    ra = (z2 - w1) / sa
    rb = (z2 - w1 + shift) / sb
    lse, wa, wb = _lse2(-0.5 * ra * ra, -0.5 * rb * rb)
    # d(-ra^2/2)/dz2 = -ra/sa, d/dz1 = ra w1'/sa;
    # d(-rb^2/2)/dz2 = -rb/sb, d/dz1 = rb (w1' - shift')/sb
    ga, gb = wa * ra / sa, wb * rb / sb
    return lse, ga * dw1 + gb * (dw1 - dshift), -(ga + gb)


def _u3(z1, z2):
    """``-U3`` and its gradient; ``w2 = 3 exp(-((z1 - 1)/0.6)^2 / 2)``,
    ``w2' = -w2 (z1 - 1)/0.36``."""
    w1, dw1 = _w1(z1)
    w2 = 3.0 * np.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)
    dw2 = -w2 * (z1 - 1.0) / 0.36
    return _two_bumps(z2, w1, dw1, w2, dw2, 0.35, 0.35)


def _u4(z1, z2):
    """``-U4`` and its gradient; ``w3 = 3 sigma(t)``, ``t = (z1 - 1)/0.3``,
    ``w3' = (3 / 0.3) sigma(t) sigma(-t)``."""
    w1, dw1 = _w1(z1)
    t = (z1 - 1.0) / 0.3
    sig = expit(t)
    w3 = 3.0 * sig
    dw3 = 10.0 * sig * expit(-t)
    return _two_bumps(z2, w1, dw1, w3, dw3, 0.4, 0.35)


_FUNCTIONS = {"U1": _u1, "U2": _u2, "U3": _u3, "U4": _u4}
# Mass along z2 at fixed z1 (the same for every z1): sums of Gaussian integrals s sqrt(2 pi).
_Z2_MASS = {"U2": 0.4 * _SQRT_2PI, "U3": 0.7 * _SQRT_2PI, "U4": 0.75 * _SQRT_2PI}


class RezendePotential:
    """The log-density ``-U(z)`` (times an optional envelope) of a Rezende-Mohamed potential.

    Build it with :func:`rezende_potential`. Calling it on ``x`` of shape ``(n, 2)`` returns
    ``(log_p, grad)`` of shapes ``(n,)`` and ``(n, 2)`` (float64), the form ``Flow.kl_and_grad``
    takes as ``log_target``; a single point ``(2,)`` gives a scalar and a ``(2,)`` gradient.

    Attributes
    ----------
    name : str
    envelope : {"box", None}
    bound, width : float
        The soft box ``|z1| <= bound`` and its Gaussian fall-off width.
    """

    def __init__(self, name, envelope="box", bound=4.0, width=0.5):
        where = "rezende_potential"
        if not isinstance(name, str):
            raise TypeError(f"{where}: name must be a str, one of {POTENTIALS}, got "
                            f"{type(name).__name__}")
        if name not in POTENTIALS:
            raise ValueError(f"{where}: unknown potential {name!r}; choose one of {POTENTIALS}")
        if envelope not in _ENVELOPES:
            raise ValueError(f"{where}: envelope must be 'box' or None, got {envelope!r}")
        self.name = name
        self.envelope = envelope
        self.bound = check_positive(bound, where, "bound")
        self.width = check_positive(width, where, "width")
        self._log_z = None

    def __repr__(self):
        if self.envelope is None:
            return f"rezende_potential({self.name!r}, envelope=None)"
        return (f"rezende_potential({self.name!r}, envelope='box', bound={self.bound}, "
                f"width={self.width})")

    def __call__(self, x):
        """``(log_p, grad)``: ``-U(x)`` plus the log-envelope, and its gradient."""
        x2, was_1d = as_batch(x, 2, f"rezende_potential({self.name!r})")
        x2 = x2.astype(np.float64, copy=False)
        z1, z2 = x2[:, 0], x2[:, 1]
        with np.errstate(over="ignore", under="ignore"):
            log_p, g1, g2 = _FUNCTIONS[self.name](z1, z2)
            if self.envelope == "box":
                # log E = -1/2 (excess / width)^2, excess = max(|z1| - bound, 0);
                # d log E / dz1 = -sign(z1) excess / width^2
                excess = np.maximum(np.abs(z1) - self.bound, 0.0)
                log_p = log_p - 0.5 * (excess / self.width) ** 2
                g1 = g1 - np.sign(z1) * excess / self.width ** 2
        grad = np.stack([g1, g2], axis=1)
        if was_1d:
            return log_p[0], grad[0]
        return log_p, grad

    def log_prob(self, x):
        """The log-density alone (``(n, 2)`` -> ``(n,)``), e.g. for plotting."""
        return self(x)[0]

    @property
    def log_normalizer(self):
        """``log Z = log int exp(-U(z)) E(z1) dz`` (``inf`` for ``U2``-``U4`` without envelope).

        Closed form for ``U2``-``U4`` (see the module notes); for ``U1`` a tensor trapezoid rule
        on ``[-R, R]^2`` (``R = 6``, plus the box's tails when they reach further) at spacing
        ``0.005``: the integrand is smooth and below ``e^-30`` of its maximum at the edges, so
        the rule is accurate to ~1e-12 relative (the cone point at the origin, where the density
        is ``e^-12.5`` of its maximum, contributes an error far below that).
        """
        if self._log_z is None:
            self._log_z = self._compute_log_z()
        return self._log_z

    def _envelope_length(self):
        # int E(z1) dz1 = 2 bound + 2 int_0^inf exp(-t^2 / (2 width^2)) dt
        return 2.0 * self.bound + self.width * _SQRT_2PI

    def _compute_log_z(self):
        if self.name != "U1":
            if self.envelope is None:
                return math.inf
            return math.log(_Z2_MASS[self.name] * self._envelope_length())
        # The ring |z| = 2 (sd 0.4) is inside [-4.5, 4.5]^2 to e^-24; R = 6 gives e^-40.
        radius = 6.0
        h = 0.005
        n = int(round(2 * radius / h)) + 1
        grid = np.linspace(-radius, radius, n)
        total = 0.0
        weights = np.full(n, h)
        weights[[0, -1]] = 0.5 * h
        for start in range(0, n, 400):  # rows in blocks: bounded memory
            rows = grid[start:start + 400]
            z = np.stack(np.broadcast_arrays(rows[:, None], grid[None, :]), axis=-1).reshape(-1, 2)
            log_p = self.log_prob(z).reshape(rows.size, n)
            total += float(weights[start:start + 400] @ np.exp(log_p) @ weights)
        return math.log(total)


def rezende_potential(name, *, envelope="box", bound=4.0, width=0.5):
    r"""The log-density ``-U(z)`` of a Rezende-Mohamed (2015) potential, with its gradient.

    Parameters
    ----------
    name : {"U1", "U2", "U3", "U4"}
        The potential of Table 1 (see :data:`POTENTIALS`).
    envelope : {"box", None}, default "box"
        ``"box"`` multiplies ``exp(-U)`` by ``exp(-1/2 (max(|z1| - bound, 0) / width)^2)``, which
        is 1 on the band ``|z1| <= bound`` (the target is exactly the paper's there) and makes
        ``U2``-``U4`` normalisable, so that fitting by reverse KL is well posed. ``None``: the
        bare ``-U`` (improper for ``U2``-``U4``).
    bound : float, default 4.0
        Half-width of the band; 4 is the square ``[-4, 4]^2`` of the paper's Figure 3.
    width : float, default 0.5
        Standard deviation of the Gaussian fall-off outside the band.

    Returns
    -------
    RezendePotential
        Callable ``x -> (log_p, grad)`` on ``(n, 2)`` arrays (float64 ``(n,)`` and ``(n, 2)``),
        the ``log_target`` form of :meth:`refflow.Flow.kl_and_grad`; also ``.log_prob(x)`` and
        ``.log_normalizer`` (``log Z``, so ``E_q[log q - log p~] + log Z`` is the true KL).

    Raises
    ------
    ValueError
        Unknown name or envelope, non-positive ``bound`` or ``width``.
    TypeError
        ``name`` not a str, ``bound``/``width`` not numbers.

    Notes
    -----
    The formulas, gradients and the envelope's normalising constants are in the module
    docstring of ``refflow.data.potentials``.

    References
    ----------
    Rezende, Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
    arXiv:1505.05770, Table 1.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.data.potentials import rezende_potential
    >>> u2 = rezende_potential("U2")
    >>> log_p, grad = u2(np.array([[1.0, 0.6], [0.0, 0.4]]))
    >>> log_p                      # one sd (0.4) below and above the curve z2 = sin(pi z1 / 2)
    array([-0.5, -0.5])
    >>> grad[1]                    # (0.4 / 0.4 * (pi / 2) / 0.4, -0.4 / 0.4 / 0.4)
    array([ 3.92699082, -2.5       ])
    >>> round(u2.log_normalizer, 6)          # log(0.4 sqrt(2 pi) (8 + 0.5 sqrt(2 pi)))
    2.22763
    """
    return RezendePotential(name, envelope=envelope, bound=bound, width=width)
