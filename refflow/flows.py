r"""Model builders: ready-made flows ``Flow(StandardNormal(dim), Chain([...]))``.

Each builder stacks refflow's layers in the published layout of one model family, with the
options of the paper and defaults taken from the papers and the usual peer libraries (zuko 1.6,
nflows 0.14); every builder's docstring says which default comes from where.

=====================  =====================================================  ==================
builder                one step (density direction, data -> base)             BUILDERS key
=====================  =====================================================  ==================
:func:`RealNVP`        ``AffineCoupling``, alternating masks [+ BN]           ``"realnvp"``
:func:`MAF`            [permutation +] ``MaskedAffineAutoregressive`` [+ BN]  ``"maf"``
:func:`NSF`            ``LULinear`` + ``MaskedSplineAutoregressive``          ``"nsf"``
:func:`NSF`            ``LULinear`` + ``SplineCoupling`` (alternating masks)  ``"nsf-coupling"``
:func:`Glow`           ``ActNorm`` + ``LULinear`` + ``AffineCoupling``        ``"glow"``
:func:`PlanarFlow`     ``Planar``                                             ``"planar"``
:func:`RadialFlow`     ``Radial``                                             ``"radial"``
:func:`SylvesterFlow`  ``Sylvester``                                          ``"sylvester"``
:func:`BNAF`           ``BlockNeuralAutoregressive`` + permutation            ``"bnaf"``
:func:`GF`             ``Gaussianization`` [+ ``Householder`` between]        ``"gf"``
:func:`NAF`            ``MaskedMonotonicAutoregressive`` (or sigmoidal)       ``"naf"``
:func:`UNAF`           ``UnconstrainedMonotonicAutoregressive``               ``"unaf"``
:func:`SOSPF`          ``SumOfSquaresAutoregressive``                         ``"sospf"``
:func:`BPF`            ``BernsteinAutoregressive``                            ``"bpf"``
=====================  =====================================================  ==================

(BN: an optional ``BatchNorm``.)

Layer order
-----------
The papers (and nflows, zuko) describe a model in the *density* direction: the data go
through step 1 first. refflow's ``Chain`` applies its list in the *sampling* direction
(``forward``, ``z -> x``) and runs it backwards for densities, so every builder writes the
steps in the papers' density order and then reverses the list: ``flow.bijector.layers[-1]`` is
the first layer the data meet, ``flow.bijector.layers[0]`` the last (the one next to the base
distribution). The layers then appear in ``flow.bijector.layers`` in the reverse of the order
in which nflows' and zuko's models list the same steps.

Conditional flows
-----------------
``context_dim`` (RealNVP, MAF, NSF, Glow) is handed to every conditioner, so that
``flow.log_prob(x, context)`` and ``flow.sample(n, rng, context=c)`` model ``q(x | c)``;
normalisation and linear layers stay unconditional. The planar family has no conditioner
(there is no amortisation network here), so those builders refuse a context.

Randomness
----------
``rng`` (None, an int seed or a ``numpy.random.Generator``) seeds every initialisation, layer
by layer in the order of the density direction: the same seed gives the same parameters and
buffers.
"""

import numpy as np

from ._validation import (check_bool, check_choice, check_dim, check_hidden, check_int,
                          check_positive, check_rng)
from .bijectors import (
    ActNorm, AffineCoupling, BatchNorm, Chain, LULinear, MaskedAffineAutoregressive,
    MaskedSplineAutoregressive, Permute, Planar, Radial, Reverse, SplineCoupling, Sylvester,
)
from .bijectors import (
    BernsteinAutoregressive, BlockNeuralAutoregressive, Gaussianization, Householder, Inverse,
    MaskedMonotonicAutoregressive, NeuralAutoregressive, SumOfSquaresAutoregressive,
    UnconstrainedMonotonicAutoregressive,
)
from .bijectors.linear import orthogonal_lu
from .bijectors.scale_maps import SCALE_MAPS
from .bijectors.spline_core import identity_parameters, layer_spline_map
from .distributions import Flow, StandardNormal, Uniform
from .nn.activations import ACTIVATIONS

__all__ = ["RealNVP", "MAF", "NSF", "NCSF", "Glow", "PlanarFlow", "RadialFlow", "SylvesterFlow",
           "BNAF", "GF", "NAF", "UNAF", "SOSPF", "BPF", "BUILDERS"]

_PERMUTATIONS = ("reverse", "random")
_DEGREE_RULES = ("cyclic", "equal", "random")


def _common(where, dim, n_layers, hidden, activation, context_dim, rng, min_dim=1):
    """Validate the options every network-based builder shares; ``rng`` as a Generator."""
    dim = check_dim(dim, where)
    if dim < min_dim:
        raise ValueError(f"{where}: dim must be at least {min_dim} (a coupling layer needs an "
                         f"identity part and a transformed part), got {dim}; use MAF or NSF "
                         f"(autoregressive) for one-dimensional data")
    n_layers = check_int(n_layers, where, "n_layers", minimum=1)
    hidden = check_hidden(hidden, where)
    activation = check_choice(activation, ACTIVATIONS, where, "activation")
    if context_dim is not None:
        context_dim = check_dim(context_dim, where, "context_dim")
    return dim, n_layers, hidden, activation, context_dim, check_rng(rng, f"{where}: rng")


def _alternating_mask(dim, step):
    """Step ``k`` transforms the coordinates ``j`` with ``j % 2 != k % 2`` (True = transformed).

    The same alternation as nflows' ``SimpleRealNVP`` (``mask[::2] = -1``, negated every layer)
    and zuko's ``RealNVP`` (identity part ``arange(dim) % 2 == k % 2``).
    """
    return np.arange(dim) % 2 != step % 2


def _flow(density_order):
    """``Flow(StandardNormal, Chain)`` from layers listed in the density direction."""
    chain = Chain(density_order[::-1])
    return Flow(StandardNormal(chain.dim), chain)


def _set_identity_spline_bias(layer, bias_key, n_outputs, n_bins):
    """Last-layer bias of a zeroed conditioner: every spline starts as the identity.

    With the last layer's weights at zero (``zero_last=True``) the conditioner outputs its bias;
    for the "durkan" map, zero widths/heights give uniform bins and inner derivatives
    ``1e-3 + softplus(u_d)``, which equal 1 at ``u_d = log(expm1(1 - 1e-3))``.
    """
    theta = identity_parameters(layer._map)
    layer.params[bias_key] = np.tile(theta, n_outputs)


def _orthogonal_lu(dim, rng):
    """LU factors of a random rotation, Glow's initialisation of the 1x1 convolution.

    ``Q`` from the QR decomposition of a Gaussian matrix is orthogonal; ``W = Q D`` with the
    signs ``D`` that keep ``diag U > 0`` (:func:`refflow.bijectors.linear.orthogonal_lu`) is
    still orthogonal (``log|det W| = 0``). Returns ``(perm, params)`` for ``LULinear`` with
    ``upper_diag="exp"``.
    """
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    perm, params, _ = orthogonal_lu(q)
    return perm, params


def _build(where, make):
    """Run ``make()``, re-raising a layer's ValueError with the builder's name in front."""
    try:
        return make()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------- builders
def RealNVP(dim, *, n_layers=5, hidden=(64, 64), activation="relu", scale="softclip",
            batch_norm=False, context_dim=None, rng=None):
    r"""Real NVP for vectors: affine coupling layers with alternating masks.

    Parameters
    ----------
    dim : int
        Event size, at least 2 (a coupling layer needs an identity and a transformed part).
    n_layers : int, default 5
        Number of coupling layers (the "Real NVP (5)" of the MAF paper's density experiments;
        zuko's default is 3, nflows has none).
    hidden : sequence of int, default (64, 64)
        Hidden widths of every conditioner MLP (zuko's default).
    activation : str, default "relu"
        Hidden activation (zuko's and nflows' default).
    scale : str, default "softclip"
        Scale map of :mod:`refflow.bijectors.scale_maps`. The default is zuko's soft-clipped
        log-scale (``|s| < 6.9``), which keeps training finite; the paper's ``exp(s)`` of a
        tanh-bounded ``s`` is closest to ``"tanh"``; nflows' coupling default is ``"sigmoid"``.
    batch_norm : bool, default False
        Add a :class:`~refflow.BatchNorm` after every coupling layer (density direction), as
        the paper's batch normalisation and nflows' ``batch_norm_between_layers``. The flow then
        needs ``flow.eval()`` before sampling.
    context_dim : int, optional
        Makes every conditioner read ``[x_a, context]``: a conditional flow ``q(x | c)``.
    rng : None, int or numpy.random.Generator
        Seeds every conditioner (torch's ``nn.Linear`` initialisation).

    Returns
    -------
    Flow
        ``Flow(StandardNormal(dim), Chain(layers))``.

    Raises
    ------
    ValueError
        For ``dim < 2`` or an option out of range; the message names ``RealNVP``.
    TypeError
        An option of the wrong type (a float for an int, a str for a bool, ...).

    Notes
    -----
    In the density direction, coupling step ``k = 0, 1, ...`` transforms the coordinates ``j``
    with ``j % 2 != k % 2`` (nflows' ``SimpleRealNVP`` and zuko's ``RealNVP`` alternate the
    same way) by ``z_b = (x_b - t) exp(-s)``, with ``t, s`` from an MLP of the other part.
    Parameters: every conditioner is ``MLP(n_a [+ context_dim], 2 n_b, hidden)``; for
    ``dim = 2``, 8 layers and hidden ``(64, 64)`` that is ``8 * 4418 = 35,344``, as zuko's and
    nflows' models of the same configuration.

    References
    ----------
    Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", 2017, arXiv:1605.08803.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import RealNVP
    >>> flow = RealNVP(2, n_layers=4, hidden=(16, 16), rng=0)
    >>> len(flow.bijector), flow.log_prob(np.zeros((3, 2))).shape
    (4, (3,))
    """
    where = "RealNVP"
    dim, n_layers, hidden, activation, context_dim, rng = _common(
        where, dim, n_layers, hidden, activation, context_dim, rng, min_dim=2)
    scale = check_choice(scale, SCALE_MAPS, where, "scale")
    batch_norm = check_bool(batch_norm, where, "batch_norm")

    def make():
        layers = []
        for k in range(n_layers):
            layers.append(AffineCoupling(dim, mask=_alternating_mask(dim, k), hidden=hidden,
                                         activation=activation, scale=scale,
                                         context_dim=context_dim, rng=rng))
            if batch_norm:
                layers.append(BatchNorm(dim))
        return _flow(layers)

    return _build(where, make)


def MAF(dim, *, n_layers=5, hidden=(64, 64), activation="relu", scale="softclip",
        permutation="reverse", batch_norm=False, hidden_degrees="cyclic", context_dim=None,
        rng=None):
    r"""Masked autoregressive flow: MADE layers with an order reversal between them.

    Parameters
    ----------
    dim : int
        Event size (1 works: each layer is then an affine map with learned constants).
    n_layers : int, default 5
        Number of MADE layers ("MAF (5)" in the paper; zuko's default is 3).
    hidden : sequence of int, default (64, 64)
        MADE hidden widths (zuko's default); each at least ``dim - 1`` (``dim`` with a
        context) for the deterministic degree rules.
    activation : str, default "relu"
    scale : str, default "softclip"
        Scale map (:mod:`refflow.bijectors.scale_maps`). The paper's is ``"exp"`` (raw
        ``alpha``); its unbounded log-scales can overflow in the sequential sampling passes, so
        the default is zuko's bounded ``"softclip"``; nflows uses ``"softplus"``.
    permutation : {"reverse", "random"} or None, default "reverse"
        Layer between consecutive MADEs: :class:`~refflow.Reverse` (the paper, nflows'
        default, zuko's alternating orders), a :class:`~refflow.Permute` drawn from ``rng``
        (nflows' ``use_random_permutations``), or none.
    batch_norm : bool, default False
        A :class:`~refflow.BatchNorm` after every MADE layer (density direction), as in the
        paper's "MAF with batch normalisation" and nflows' ``batch_norm_between_layers``.
        Sampling then needs ``flow.eval()``.
    hidden_degrees : {"cyclic", "equal", "random"}, default "cyclic"
        MADE's rule for hidden-unit degrees (:class:`refflow.nn.MADE`): nflows' cyclic rule,
        TFP's "equal", or Germain et al.'s random degrees (drawn from ``rng``; the only rule
        that accepts hidden layers narrower than ``dim - 1``).
    context_dim : int, optional
        A conditional MAF: the context feeds every MADE's first layer.
    rng : None, int or numpy.random.Generator
        Seeds the MADE weights (torch's initialisation) and random permutations.

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For an option out of range (the message names ``MAF``).
    TypeError
        An option of the wrong type (a float for an int, a str for a bool, ...).

    Notes
    -----
    Density direction: ``MADE_1 [BN] P MADE_2 [BN] P ... MADE_K [BN]``, each MADE in natural
    order, computing ``z_i = (x_i - mu_i) exp(-s_i)`` in one pass. A MADE with hidden
    ``(H_1, ..., H_L)`` has ``(dim [+ c]) H_1 + H_1 + ... + H_L 2 dim + 2 dim`` parameters
    (masked weights included, as torch counts them): 576,640 for ``dim = 64``, 5 layers and
    hidden ``(256, 256)``, the count of zuko's and nflows' models of that configuration.

    References
    ----------
    Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation", 2017,
    arXiv:1705.07057.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import MAF
    >>> flow = MAF(3, n_layers=2, hidden=(8,), rng=0)
    >>> [type(layer).__name__ for layer in flow.bijector.layers]
    ['MaskedAffineAutoregressive', 'Reverse', 'MaskedAffineAutoregressive']
    >>> flow.sample(4, rng=1).shape
    (4, 3)
    """
    where = "MAF"
    dim, n_layers, hidden, activation, context_dim, rng = _common(
        where, dim, n_layers, hidden, activation, context_dim, rng)
    scale = check_choice(scale, SCALE_MAPS, where, "scale")
    hidden_degrees = check_choice(hidden_degrees, _DEGREE_RULES, where, "hidden_degrees")
    if permutation is not None:
        permutation = check_choice(permutation, _PERMUTATIONS, where, "permutation")
    batch_norm = check_bool(batch_norm, where, "batch_norm")

    def make():
        layers = []
        for k in range(n_layers):
            if k > 0 and permutation == "reverse":
                layers.append(Reverse(dim))
            elif k > 0 and permutation == "random":
                layers.append(Permute(dim, rng=rng))
            layers.append(MaskedAffineAutoregressive(
                dim, hidden=hidden, activation=activation, scale=scale,
                hidden_degrees=hidden_degrees, context_dim=context_dim, rng=rng))
            if batch_norm:
                layers.append(BatchNorm(dim))
        return _flow(layers)

    return _build(where, make)


def NSF(dim, *, n_layers=5, hidden=(64, 64), activation="relu", n_bins=8, bound=3.0,
        autoregressive=True, hidden_degrees="cyclic", context_dim=None, rng=None):
    r"""Neural spline flow: per step an ``LULinear`` then a rational-quadratic spline layer.

    Parameters
    ----------
    dim : int
        Event size; 1 works with ``autoregressive=True`` (a learned elementwise spline).
    n_layers : int, default 5
        Number of steps (zuko's default is 3; the paper uses 5 to 10 on tabular data).
    hidden : sequence of int, default (64, 64)
        Conditioner widths (zuko's default; the paper uses 256-unit residual blocks). For the
        autoregressive layers each at least ``dim - 1`` (``dim`` with a context).
    activation : str, default "relu"
    n_bins : int, default 8
        ``K``, bins per spline (the paper's tabular setting and zuko's default).
    bound : float, default 3.0
        ``B``: splines on ``[-B, B]``, identity tails (the paper's ``B = 3``; zuko fixes 5).
    autoregressive : bool, default True
        :class:`~refflow.MaskedSplineAutoregressive` (RQ-NSF (AR), one pass for densities,
        ``dim`` for samples) or, with False, :class:`~refflow.SplineCoupling` with alternating
        masks (RQ-NSF (C), one pass both ways; needs ``dim >= 2``).
    hidden_degrees : {"cyclic", "equal", "random"}, default "cyclic"
        MADE's degree rule for the autoregressive layers (see :func:`MAF`); coupling layers
        have no degrees, so with ``autoregressive=False`` only the default is accepted.
    context_dim : int, optional
        A conditional NSF: the context feeds every conditioner.
    rng : None, int or numpy.random.Generator
        Seeds the conditioners' hidden layers and the permutations of the ``LULinear`` layers.

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For an option out of range, or ``dim = 1`` with ``autoregressive=False``.
    TypeError
        An option of the wrong type (a float for an int, a str for a bool, ...).

    Notes
    -----
    Density direction, per step: ``LULinear`` (a random permutation inside ``P``, unit-lower
    ``L``, ``diag U = softplus(u) + 1e-3``, identity-initialised: nflows' ``LULinear`` as in
    the paper's code, which draws a ``RandomPermutation`` before it) and then the spline layer,
    with the paper's parameterisation (``"durkan"``: softmax bins with minimum 1e-3,
    ``1e-3 + softplus`` derivatives, unit boundary slopes).

    *Initialisation.* Every spline starts as the identity: the conditioners' last layers are
    zero (``zero_last``) except for the biases of the derivative entries, set to
    ``log(expm1(1 - 1e-3))`` so that ``1e-3 + softplus`` gives 1 (nflows'
    ``enable_identity_init``; with plain zeros the durkan map gives derivatives 0.694). The
    hidden layers keep torch's initialisation, so gradients reach them once the last layer
    moves. The whole flow thus starts as a fixed permutation of the coordinates.

    Parameter count of one autoregressive step: the MADE's
    ``(dim [+ c]) H_1 + H_1 + ... + H_L P dim + P dim`` with ``P = 3K - 1`` (2,303,680 for
    five steps at ``dim = 64``, hidden ``(256, 256)``, ``K = 8``, as nflows' and zuko's
    autoregressive NSF) plus ``dim (dim - 1) + 2 dim`` for the ``LULinear``.

    References
    ----------
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import NSF
    >>> flow = NSF(2, n_layers=2, hidden=(8,), rng=0)
    >>> [type(layer).__name__ for layer in flow.bijector.layers]
    ['MaskedSplineAutoregressive', 'LULinear', 'MaskedSplineAutoregressive', 'LULinear']
    >>> x = np.array([[0.5, -1.0]])
    >>> bool(np.isclose(flow.log_prob(x)[0], flow.base.log_prob(x)[0]))   # starts volume-preserving
    True
    """
    where = "NSF"
    autoregressive = check_bool(autoregressive, where, "autoregressive")
    dim, n_layers, hidden, activation, context_dim, rng = _common(
        where, dim, n_layers, hidden, activation, context_dim, rng,
        min_dim=1 if autoregressive else 2)
    n_bins = check_int(n_bins, where, "n_bins", minimum=2)
    bound = check_positive(bound, where, "bound")
    hidden_degrees = check_choice(hidden_degrees, _DEGREE_RULES, where, "hidden_degrees")
    if not autoregressive and hidden_degrees != "cyclic":
        raise ValueError(f"{where}: hidden_degrees applies to the autoregressive layers only; "
                         f"coupling layers (autoregressive=False) have no MADE degrees")
    _build(where, lambda: layer_spline_map(where, "durkan", n_bins, bound))
    last = f"b{len(hidden)}"

    def make():
        layers = []
        for k in range(n_layers):
            layers.append(LULinear(dim, permutation="random", upper_diag="softplus", rng=rng))
            if autoregressive:
                spline = MaskedSplineAutoregressive(
                    dim, hidden=hidden, activation=activation, n_bins=n_bins, bound=bound,
                    hidden_degrees=hidden_degrees, context_dim=context_dim, zero_last=True,
                    rng=rng)
                _set_identity_spline_bias(spline, f"made.{last}", dim, n_bins)
            else:
                mask = _alternating_mask(dim, k)
                spline = SplineCoupling(
                    dim, mask=mask, hidden=hidden, activation=activation, n_bins=n_bins,
                    bound=bound, context_dim=context_dim, zero_last=True, rng=rng)
                _set_identity_spline_bias(spline, f"conditioner.{last}", int(mask.sum()),
                                          n_bins)
            layers.append(spline)
        return _flow(layers)

    return _build(where, make)


def NCSF(dim, *, n_layers=3, hidden=(64, 64), activation="relu", n_bins=8, min_derivative=1e-3,
         context_dim=None, rng=None):
    r"""Neural circular spline flow on the torus ``[-pi, pi)^dim`` (zuko's ``NCSF``).

    Parameters
    ----------
    dim : int
    n_layers : int, default 3
        Number of autoregressive steps (zuko's ``MAF`` default ``transforms=3``).
    hidden : sequence of int, default (64, 64)
        MADE widths (zuko's default ``hidden_features``).
    activation : str, default "relu"
    n_bins : int, default 8
        ``K`` (zuko's ``bins``).
    min_derivative : float, default 1e-3
        zuko's ``slope``.
    context_dim : int, optional
    rng : None, int or numpy.random.Generator
        Seeds the MADEs (torch's initialisation; zuko does not zero the last layer).

    Returns
    -------
    Flow
        ``Flow(Uniform(-(pi + 1e-5), pi + 1e-5), Chain)``.

    Notes
    -----
    zuko 1.6, ``zuko/flows/spline.py`` lines 65-117: ``NCSF`` is a ``MAF`` whose univariate
    transformation is ``CircularRQSTransform`` = ``CircularShiftTransform(bound=pi)`` then
    ``MonotonicRQSTransform(bound=pi, slope)`` (unit end slopes, so ``d_K = d_0``), with base
    ``BoxUniform(-pi - 1e-5, pi + 1e-5)``; zuko's ``MAF`` (``zuko/flows/autoregressive.py``)
    alternates the orders ``arange(dim)`` and its flip (``randperm=False``), no linear layers
    in between. Here step ``k`` (density direction) is
    ``MaskedSplineAutoregressive(parameterization="zuko", circular=True, shift=True,
    order="natural" if k even else "reverse")``: ``z_i = RQS(s(x_i); theta_i(x_<i))`` with
    ``s(v) = (v mod 2 pi) - pi`` and the MADE fed the raw angles (as zuko's). Data must lie in
    ``[-pi, pi]`` (the layers raise ``ValueError`` outside). The base's box is wider than the
    torus by 1e-5 on each side (zuko's), so the density integrates to
    ``(2 pi / (2 pi + 2e-5))^dim`` over the torus, not exactly 1.

    References
    ----------
    Rezende, Papamakarios, Racaniere, Albergo, Kanwar, Shanahan, Cranmer, "Normalizing Flows on
    Tori and Spheres", 2020, arXiv:2002.02428.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import NCSF
    >>> flow = NCSF(2, n_layers=2, hidden=(8,), rng=0)
    >>> [type(layer).__name__ for layer in flow.bijector.layers]
    ['MaskedSplineAutoregressive', 'MaskedSplineAutoregressive']
    >>> x = flow.sample(3, rng=1)
    >>> bool((np.abs(x) <= np.pi).all()), flow.log_prob(x).shape
    (True, (3,))
    """
    where = "NCSF"
    dim, n_layers, hidden, activation, context_dim, rng = _common(
        where, dim, n_layers, hidden, activation, context_dim, rng)
    n_bins = check_int(n_bins, where, "n_bins", minimum=2)
    min_derivative = check_positive(min_derivative, where, "min_derivative")

    def make():
        layers = [MaskedSplineAutoregressive(
            dim, hidden=hidden, activation=activation, n_bins=n_bins, parameterization="zuko",
            min_derivative=min_derivative, circular=True, shift=True,
            order="natural" if k % 2 == 0 else "reverse", context_dim=context_dim, rng=rng)
            for k in range(n_layers)]
        edge = np.pi + 1e-5
        return Flow(Uniform(np.full(dim, -edge), np.full(dim, edge)), Chain(layers[::-1]))

    return _build(where, make)


def Glow(dim, *, n_layers=5, hidden=(64, 64), activation="relu", scale="softclip",
         context_dim=None, rng=None):
    r"""Glow for vectors: steps of ActNorm, an LU-decomposed linear map and an affine coupling.

    Parameters
    ----------
    dim : int
        Event size, at least 2.
    n_layers : int, default 5
        Number of steps (the tabular analogue of Glow's ``K`` steps per level).
    hidden : sequence of int, default (64, 64)
        Conditioner widths (the paper's NN() is a 3-layer CNN; zuko/nflows MLP defaults here).
    activation : str, default "relu"
    scale : str, default "softclip"
        Scale map of the couplings. Glow's code computes ``scale = sigmoid(h + 2)`` in the
        density direction (its paper writes ``exp(log s)``); refflow's layers scale in the
        sampling direction, so that code's map is not among the named maps; the default is
        zuko's bounded ``"softclip"``, which with the zeroed last layer starts at the identity.
    context_dim : int, optional
        A conditional Glow: the context feeds every coupling's conditioner.
    rng : None, int or numpy.random.Generator
        Seeds the random rotations and the conditioners.

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For ``dim < 2`` or an option out of range.
    TypeError
        An option of the wrong type (a float for an int, a str for a bool, ...).

    Notes
    -----
    Density direction, per step (Glow, section 3): :class:`~refflow.ActNorm` (data-dependent
    initialisation from the first batch the flow sees: call ``log_prob`` or fit on data before
    sampling), :class:`~refflow.LULinear` (``W = P L U``, ``diag U = exp(u)``) initialised as
    a random rotation (section 3.2: ``W = Q`` from a QR decomposition, ``log|det W| = 0``; the
    columns of ``U`` with a negative diagonal are negated, since refflow keeps
    ``diag U > 0``), and :class:`~refflow.AffineCoupling` on the default half mask (the
    second half transformed) whose conditioner's last layer starts at zero, so that the
    coupling starts as the identity (section 3.3, "zero initialization").

    References
    ----------
    Kingma, Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018,
    arXiv:1807.03039.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import Glow
    >>> flow = Glow(3, n_layers=2, hidden=(8,), rng=0)
    >>> [type(layer).__name__ for layer in flow.bijector.layers[:3]]
    ['AffineCoupling', 'LULinear', 'ActNorm']
    >>> x = np.random.default_rng(1).normal(loc=5.0, size=(100, 3))
    >>> lp = flow.log_prob(x)            # the first batch initialises the ActNorm layers
    >>> bool(flow.bijector.layers[2].buffers["initialized"])
    True
    """
    where = "Glow"
    dim, n_layers, hidden, activation, context_dim, rng = _common(
        where, dim, n_layers, hidden, activation, context_dim, rng, min_dim=2)
    scale = check_choice(scale, SCALE_MAPS, where, "scale")

    def make():
        layers = []
        for _ in range(n_layers):
            perm, lu_params = _orthogonal_lu(dim, rng)
            linear = LULinear(dim, permutation=perm, upper_diag="exp")
            linear.params.update(lu_params)
            coupling = AffineCoupling(dim, hidden=hidden, activation=activation, scale=scale,
                                      context_dim=context_dim, zero_last=True, rng=rng)
            layers += [ActNorm(dim), linear, coupling]
        return _flow(layers)

    return _build(where, make)


def _unconditional(where, context_dim):
    if context_dim is not None:
        raise ValueError(f"{where}: conditional planar, radial and Sylvester flows are not "
                         f"supported (these layers have no conditioner and refflow has no "
                         f"amortisation network); got context_dim={context_dim!r}")


def _stack(where, dim, n_layers, rng, context_dim, make_layer):
    """``n_layers`` layers from ``make_layer(dim, rng)``, validated and named ``where``."""
    _unconditional(where, context_dim)
    dim = check_dim(dim, where)
    n_layers = check_int(n_layers, where, "n_layers", minimum=1)
    rng = check_rng(rng, f"{where}: rng")
    return _build(where, lambda: _flow([make_layer(dim, rng) for _ in range(n_layers)]))


def PlanarFlow(dim, *, n_layers=16, context_dim=None, rng=None):
    r"""A stack of planar layers ``x = z + u_hat tanh(w^T z + b)`` (Rezende & Mohamed 2015).

    Parameters
    ----------
    dim : int
    n_layers : int, default 16
        ``K`` (the paper shows K = 2, 8, 32; van den Berg et al. compare flows of 16 layers).
    context_dim : None
        Only None: a planar layer has no conditioner, so conditional planar flows are refused.
    rng : None, int or numpy.random.Generator
        Seeds each layer's initialisation.

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For an option out of range or a ``context_dim``.
    TypeError
        An option of the wrong type (a float for an int, a str for a bool, ...).

    Notes
    -----
    Each layer is initialised by :class:`~refflow.Planar` from ``rng`` (``u``, ``w``, ``b``
    from ``N(0, 1/dim)``) and keeps the paper's invertibility constraint (appendix A.1).
    Density evaluation runs each layer's numerical inverse; the family is mostly fitted by
    reverse KL (``Flow.kl_and_grad``), through the closed-form forward pass.

    References
    ----------
    Rezende, Mohamed, "Variational Inference with Normalizing Flows", 2015, arXiv:1505.05770.
    """
    return _stack("PlanarFlow", dim, n_layers, rng, context_dim,
                  lambda d, g: Planar(d, rng=g))


def RadialFlow(dim, *, n_layers=16, context_dim=None, rng=None):
    r"""A stack of radial layers ``x = z + beta (z - z0) / (alpha + |z - z0|)``.

    Rezende & Mohamed (2015); each :class:`~refflow.Radial` layer has ``alpha > 0``,
    ``beta >= -alpha`` by construction and a closed-form inverse.

    Parameters
    ----------
    dim : int
    n_layers : int, default 16
    context_dim : None
        Only None (no conditioner, so no conditional radial flows).
    rng : None, int or numpy.random.Generator

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For an option out of range or a ``context_dim``.
    TypeError
        An option of the wrong type (a float for an int, a str for a bool, ...).

    References
    ----------
    Rezende, Mohamed, "Variational Inference with Normalizing Flows", 2015, arXiv:1505.05770.
    """
    return _stack("RadialFlow", dim, n_layers, rng, context_dim,
                  lambda d, g: Radial(d, rng=g))


def SylvesterFlow(dim, *, n_layers=16, m=None, q="householder", context_dim=None, rng=None):
    r"""A stack of Sylvester layers ``x = z + Q R h(R~ Q^T z + b)`` (van den Berg et al. 2018).

    Parameters
    ----------
    dim : int
    n_layers : int, default 16
        The paper's number of flows in its comparisons.
    m : int, optional
        Number of columns of ``Q``, ``1 <= m <= dim`` (default ``dim``).
    q : {"householder", "permutation"}, default "householder"
        H-SNF (``Q`` from trainable Householder reflections) or T-SNF (``Q`` a fixed random
        permutation per layer); see :class:`~refflow.Sylvester`.
    context_dim : None
        Only None (no amortisation network).
    rng : None, int or numpy.random.Generator

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For an option out of range (``Sylvester``'s own checks, prefixed ``SylvesterFlow``) or
        a ``context_dim``.
    TypeError
        An option of the wrong type (a float for an int, a str for a bool, ...).

    References
    ----------
    van den Berg, Hasenclever, Tomczak, Welling, "Sylvester Normalizing Flows for Variational
    Inference", 2018, arXiv:1803.05649.
    """
    return _stack("SylvesterFlow", dim, n_layers, rng, context_dim,
                  lambda d, g: Sylvester(d, m=m, q=q, rng=g))


def BNAF(dim, *, n_layers=1, hidden_factors=(8,), activation="leaky_tanh",
         parameterization="flowjax", residual=None, closed_form="density", context_dim=None,
         rng=None):
    r"""Block neural autoregressive flow: BNAF layers, each followed by a permutation.

    Parameters
    ----------
    dim : int
    n_layers : int, default 1
        Number of BNAF layers (FlowJAX's ``flow_layers=1``; the paper stacks up to 5).
    hidden_factors : sequence of int, default (8,)
        Per layer, hidden layer ``l`` has ``dim * hidden_factors[l]`` units (FlowJAX's
        ``nn_depth=1, nn_block_dim=8``; Pyro's ``block_autoregressive`` default is ``(8, 8)``).
    activation, parameterization, residual
        See :class:`~refflow.BlockNeuralAutoregressive` (defaults: FlowJAX's).
    closed_form : {"density", "sampling"}, default "density"
        Which direction runs the network: ``"density"`` (``log_prob`` in one pass, sampling
        numerical; FlowJAX's ``invert=True``, the paper's setting) or ``"sampling"`` (each layer
        wrapped in :class:`~refflow.Inverse`: sampling in one pass, ``log_prob`` numerical;
        FlowJAX's ``invert=False``, Pyro's direction).
    context_dim : int, optional
        A conditional BNAF (FlowJAX's ``cond_dim``: the context enters each layer's first
        pre-activation linearly).
    rng : None, int or numpy.random.Generator
        Seeds the layers (FlowJAX-style initialisation) and the permutations.

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For any invalid option (the message names ``BNAF``).

    Notes
    -----
    As FlowJAX's ``block_neural_autoregressive_flow``: in FlowJAX's transform direction each
    layer is the network followed by a permutation, random for ``dim > 2``, a flip for
    ``dim = 2``, none for ``dim = 1``. With ``closed_form="density"`` that direction is
    refflow's density direction (data -> base); with ``"sampling"`` it is the sampling
    direction. The numerical direction solves ``dim`` scalar monotone equations per row and
    layer (:class:`~refflow.BlockNeuralAutoregressive`).

    References
    ----------
    N. De Cao, I. Titov, W. Aziz, "Block Neural Autoregressive Flow", UAI 2019,
    arXiv:1904.04676.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import BNAF
    >>> flow = BNAF(3, n_layers=2, hidden_factors=(4,), rng=0)
    >>> [type(layer).__name__ for layer in flow.bijector.layers]
    ['Permute', 'BlockNeuralAutoregressive', 'Permute', 'BlockNeuralAutoregressive']
    >>> x = flow.sample(5, rng=1)
    >>> flow.log_prob(x).shape
    (5,)
    """
    where = "BNAF"
    dim = check_dim(dim, where)
    n_layers = check_int(n_layers, where, "n_layers", minimum=1)
    closed_form = check_choice(closed_form, ("density", "sampling"), where, "closed_form")
    if context_dim is not None:
        context_dim = check_dim(context_dim, where, "context_dim")
    rng = check_rng(rng, f"{where}: rng")

    def make():
        steps = []   # FlowJAX's transform direction
        for _ in range(n_layers):
            layer = BlockNeuralAutoregressive(
                dim, hidden_factors=hidden_factors, activation=activation,
                parameterization=parameterization, residual=residual, context_dim=context_dim,
                rng=rng)
            steps.append(layer if closed_form == "density" else Inverse(layer))
            if dim == 2:
                steps.append(Reverse(dim))
            elif dim > 2:
                steps.append(Permute(dim, rng=rng))
        if closed_form == "density":
            return _flow(steps)
        chain = Chain(steps)
        return Flow(StandardNormal(dim), chain)

    return _build(where, make)


def GF(dim, *, n_layers=3, n_components=8, kernel="gaussian", parameterization="kernel",
       weights="learned", shrink=0.0, context_dim=None, hidden=(64, 64), activation="relu",
       rng=None):
    r"""Gaussianization flow: elementwise Gaussianization layers with rotations between them.

    Parameters
    ----------
    dim : int
    n_layers : int, default 3
        Number of Gaussianization layers (zuko's ``transforms=3``).
    n_components : int, default 8
        Mixture components per coordinate (zuko's ``components=8``).
    kernel, parameterization, weights, shrink
        See :class:`~refflow.Gaussianization`. zuko's ``GF`` transformer is
        ``parameterization="zuko", weights="uniform", shrink=1e-6``; Meng et al.'s is
        ``kernel="logistic", weights="uniform"``. The default (learned weights, no shrink) is
        a bijection of the real line.
    context_dim : int, optional
        A conditional flow: each Gaussianization layer's parameters come from an MLP of the
        context (zuko's ``ElementWiseTransform``); the rotations stay unconditional.
    hidden, activation
        That MLP's hidden widths and activation (zuko's defaults); unused without a context.
    rng : None, int or numpy.random.Generator
        Seeds the layers.

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For any invalid option (the message names ``GF``).

    Notes
    -----
    Density direction: ``G_1 R_1 G_2 R_2 ... G_K`` with ``R_k`` a trainable
    :class:`~refflow.Householder` product of ``dim`` reflections (Meng et al.'s rotations;
    zuko uses ``exp(A - A^T)``, which refflow does not have), none after the last layer (as
    zuko). Each ``G_k`` is closed-form in the density direction; sampling solves one scalar
    monotone equation per coordinate and layer.

    With ``shrink > 0`` (zuko's ``1e-6``) every layer's image is the box ``|z_i| < 4.89``, so a
    flow built of them is not onto the base's support: ``log_prob`` is defined everywhere, but
    sampling raises a ``ValueError`` for the base draws outside the box (about ``2e-6`` of them
    per coordinate and layer), which zuko's bisection on ``[-10, 10]`` silently maps to the
    ends of its interval.

    References
    ----------
    C. Meng, Y. Song, J. Song, S. Ermon, "Gaussianization Flows", AISTATS 2020,
    arXiv:2003.01941.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import GF
    >>> flow = GF(2, n_layers=2, n_components=4, rng=0)
    >>> [type(layer).__name__ for layer in flow.bijector.layers]
    ['Gaussianization', 'Householder', 'Gaussianization']
    >>> flow.log_prob(np.zeros((3, 2))).shape
    (3,)
    """
    where = "GF"
    dim = check_dim(dim, where)
    n_layers = check_int(n_layers, where, "n_layers", minimum=1)
    if context_dim is not None:
        context_dim = check_dim(context_dim, where, "context_dim")
    rng = check_rng(rng, f"{where}: rng")

    def make():
        layers = []
        for k in range(n_layers):
            if k > 0 and dim > 1:
                layers.append(Householder(dim, n_reflections=dim, rng=rng))
            layers.append(Gaussianization(
                dim, n_components=n_components, kernel=kernel, parameterization=parameterization,
                weights=weights, shrink=shrink, context_dim=context_dim, hidden=hidden,
                activation=activation, rng=rng))
        return _flow(layers)

    return _build(where, make)


# ------------------------------------------------------- monotone-transformer autoregressive
_TRANSFORMERS = ("monotonic", "sigmoidal")


def _alternating_stack(where, dim, n_layers, hidden, activation, context_dim, rng, make_layer):
    """``n_layers`` autoregressive layers in natural, reverse, natural, ... order (density
    direction), as zuko's flows alternate them (no permutation layers in between)."""
    dim, n_layers, hidden, activation, context_dim, rng = _common(
        where, dim, n_layers, hidden, activation, context_dim, rng)

    def make():
        layers = [make_layer(dim, dict(hidden=hidden, activation=activation,
                                       order="natural" if k % 2 == 0 else "reverse",
                                       context_dim=context_dim, rng=rng))
                  for k in range(n_layers)]
        return _flow(layers)

    return _build(where, make)


def NAF(dim, *, n_layers=3, hidden=(64, 64), activation="relu", transformer="monotonic",
        signal=16, network=(64, 64), network_activation="elu", units=16, sigmoid_layers=1,
        context_dim=None, rng=None):
    r"""Neural autoregressive flow: monotonic-network (zuko) or sigmoidal (Huang) transformers.

    Parameters
    ----------
    dim : int
    n_layers : int, default 3
        Autoregressive layers (zuko's ``transforms`` default), in natural and reverse order
        alternately (zuko's ``randperm=False``).
    hidden : sequence of int, default (64, 64)
        MADE widths (zuko's default).
    activation : str, default "relu"
        MADE activation (zuko's ``MaskedMLP`` default).
    transformer : {"monotonic", "sigmoidal"}, default "monotonic"
        ``"monotonic"``: :class:`~refflow.MaskedMonotonicAutoregressive`, zuko's NAF (a
        monotonic MLP per coordinate fed with ``signal`` signals). ``"sigmoidal"``:
        :class:`~refflow.NeuralAutoregressive`, the paper's deep sigmoidal flow (Pyro's
        ``neural_autoregressive``: ``units = 16``).
    signal : int, default 16
        Signals per coordinate (zuko).
    network : sequence of int, default (64, 64)
        Hidden widths of the monotonic networks (zuko's ``MonotonicMLP`` default).
    network_activation : {"elu", "softplus"}, default "elu"
        The monotonic networks' two-way activation (zuko: ELU).
    units : int, default 16
        Sigmoids per sigmoidal layer (``transformer="sigmoidal"``; Pyro's ``width``).
    sigmoid_layers : int, default 1
        1 for DSF, more for DDSF (``transformer="sigmoidal"``).
    context_dim : int, optional
    rng : None, int or numpy.random.Generator

    Returns
    -------
    Flow

    Raises
    ------
    ValueError
        For any invalid option (the message names ``NAF``).

    Notes
    -----
    Each layer applies its transformer in the density direction (one MADE pass per layer for
    ``log_prob``) and inverts it numerically to sample (bracketed Newton per coordinate). With
    the defaults, parameters per layer: the MADE ``dim -> 64 -> 64 -> 16 dim`` plus ``dim``
    networks ``17 -> 64 -> 64 -> 1`` (5,377 each), as zuko's ``NAF(dim)``.

    zuko inserts a ``SoftclipTransform(bound=11)`` between its layers (density
    direction), which keeps the next layer's inputs in ``(-11, 11)``, where its bisection on
    ``[-10, 10]`` works; refflow's layers invert on all of R, and the flow has no such layer.

    References
    ----------
    Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", 2018, arXiv:1804.00779.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import NAF
    >>> flow = NAF(2, n_layers=2, hidden=(8,), signal=4, network=(8,), rng=0)
    >>> [layer.made.order.tolist() for layer in flow.bijector.layers]   # density order reversed
    [[1, 0], [0, 1]]
    >>> flow.log_prob(np.zeros((3, 2))).shape
    (3,)
    """
    where = "NAF"
    transformer = check_choice(transformer, _TRANSFORMERS, where, "transformer")
    if transformer == "monotonic":
        def make_layer(d, common):
            return MaskedMonotonicAutoregressive(d, signal=signal, network=network,
                                                 network_activation=network_activation,
                                                 **common)
    else:
        def make_layer(d, common):
            return NeuralAutoregressive(d, units=units, n_layers=sigmoid_layers, **common)
    return _alternating_stack(where, dim, n_layers, hidden, activation, context_dim, rng,
                              make_layer)


def UNAF(dim, *, n_layers=3, hidden=(64, 64), activation="relu", signal=16, network=(64, 64),
         network_activation="elu", positive="softclip", n_nodes=32, quadrature="gauss-legendre",
         context_dim=None, rng=None):
    r"""Unconstrained neural autoregressive flow (UMNN layers, zuko's UNAF).

    Parameters
    ----------
    dim : int
    n_layers : int, default 3
        Layers, natural and reverse order alternately (zuko).
    hidden : sequence of int, default (64, 64)
    activation : str, default "relu"
    signal : int, default 16
    network : sequence of int, default (64, 64)
        Integrand networks' hidden widths (zuko's UMNN).
    network_activation : {"elu", "softplus", "tanh"}, default "elu"
    positive : {"softclip", "elu", "exp"}, default "softclip"
        zuko's ``exp(y / (1 + |y| / 7))``.
    n_nodes : int, default 32
    quadrature : {"gauss-legendre", "clenshaw-curtis"}, default "gauss-legendre"
    context_dim : int, optional
    rng : None, int or numpy.random.Generator

    Returns
    -------
    Flow

    Notes
    -----
    See :class:`~refflow.UnconstrainedMonotonicAutoregressive`: the map is the ``n_nodes``
    rule applied to the integrand and its log-det that map's exact derivative (zuko reports
    ``log g(x)`` instead).

    zuko inserts a ``SoftclipTransform(bound=11)`` between its layers (density
    direction), which keeps the next layer's inputs in ``(-11, 11)``, where its bisection on
    ``[-10, 10]`` works; refflow's layers invert on all of R, and the flow has no such layer.

    References
    ----------
    Wehenkel, Louppe, "Unconstrained Monotonic Neural Networks", 2019, arXiv:1908.05164.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import UNAF
    >>> flow = UNAF(2, n_layers=2, hidden=(8,), signal=4, network=(8,), n_nodes=8, rng=0)
    >>> flow.sample(3, rng=1).shape
    (3, 2)
    """
    def make_layer(d, common):
        return UnconstrainedMonotonicAutoregressive(
            d, signal=signal, network=network, network_activation=network_activation,
            positive=positive, n_nodes=n_nodes, quadrature=quadrature, **common)
    return _alternating_stack("UNAF", dim, n_layers, hidden, activation, context_dim, rng,
                              make_layer)


def SOSPF(dim, *, n_layers=3, hidden=(64, 64), activation="relu", degree=4, n_polynomials=3,
          slope=1e-3, bound=10.0, context_dim=None, rng=None):
    r"""Sum-of-squares polynomial flow (Jaini et al. 2019; zuko's SOSPF).

    Parameters
    ----------
    dim : int
    n_layers : int, default 3
        Layers, natural and reverse order alternately (zuko's MAF default of 3).
    hidden : sequence of int, default (64, 64)
    activation : str, default "relu"
    degree : int, default 4
        ``L`` (zuko's and Pyro's default).
    n_polynomials : int, default 3
        ``K`` (zuko's and Pyro's default).
    slope : float, default 1e-3
    bound : float, default 10.0
    context_dim : int, optional
    rng : None, int or numpy.random.Generator

    Returns
    -------
    Flow

    Notes
    -----
    See :class:`~refflow.SumOfSquaresAutoregressive` (exact closed-form integral).

    zuko inserts a ``SoftclipTransform(bound=11)`` between its layers (density
    direction), which keeps the next layer's inputs in ``(-11, 11)``, where its bisection on
    ``[-10, 10]`` works; refflow's layers invert on all of R, and the flow has no such layer.

    References
    ----------
    Jaini, Selby, Yu, "Sum-of-Squares Polynomial Flow", 2019, arXiv:1905.02325.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import SOSPF
    >>> flow = SOSPF(2, n_layers=2, hidden=(8,), rng=0)
    >>> flow.log_prob(np.zeros((3, 2))).shape
    (3,)
    """
    def make_layer(d, common):
        return SumOfSquaresAutoregressive(d, degree=degree, n_polynomials=n_polynomials,
                                          slope=slope, bound=bound, **common)
    return _alternating_stack("SOSPF", dim, n_layers, hidden, activation, context_dim, rng,
                              make_layer)


def BPF(dim, *, n_layers=3, hidden=(64, 64), activation="relu", degree=21, bound=5.0,
        tails="identity", context_dim=None, rng=None):
    r"""Bernstein-polynomial flow (zuko's BPF).

    Parameters
    ----------
    dim : int
    n_layers : int, default 3
        Layers, natural and reverse order alternately (zuko's MAF default).
    hidden : sequence of int, default (64, 64)
    activation : str, default "relu"
    degree : int, default 21
        The polynomial's degree ``M``; 21 has 17 raw values per coordinate, zuko's
        ``BPF(degree=16)`` (zuko's ``degree`` is the number of raw values minus one).
    bound : float, default 5.0
    tails : {"identity", "linear"}, default "identity"
    context_dim : int, optional
    rng : None, int or numpy.random.Generator

    Returns
    -------
    Flow

    Notes
    -----
    See :class:`~refflow.BernsteinAutoregressive`. zuko's BPF has no layers between its
    transforms either.

    References
    ----------
    Arpogaus et al., "Short-Term Density Forecasting of Low-Voltage Load using
    Bernstein-Polynomial Normalizing Flows", 2022, arXiv:2204.13939.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.flows import BPF
    >>> flow = BPF(2, n_layers=2, hidden=(8,), degree=10, rng=0)
    >>> flow.log_prob(np.zeros((3, 2))).shape
    (3,)
    """
    def make_layer(d, common):
        return BernsteinAutoregressive(d, degree=degree, bound=bound, tails=tails, **common)
    return _alternating_stack("BPF", dim, n_layers, hidden, activation, context_dim, rng,
                              make_layer)


def _nsf_coupling(dim, *, n_layers=5, hidden=(64, 64), activation="relu", n_bins=8,
                  bound=3.0, hidden_degrees="cyclic", context_dim=None, rng=None,
                  **unexpected):
    """``NSF(dim, autoregressive=False, ...)``: RQ-NSF (C), the ``"nsf-coupling"`` builder.

    Its options are named in the signature (not ``**options``), so that callers that read the
    signature, as ``FlowDensity`` does for ``hidden`` and ``context_dim``, see them.
    """
    if "autoregressive" in unexpected:
        raise ValueError("nsf-coupling: autoregressive is fixed to False for this builder; "
                         "use NSF(dim, autoregressive=...) instead")
    if unexpected:
        name = sorted(unexpected)[0]
        raise TypeError(f"nsf-coupling: got an unexpected keyword argument {name!r}")
    return NSF(dim, n_layers=n_layers, hidden=hidden, activation=activation, n_bins=n_bins,
               bound=bound, autoregressive=False, hidden_degrees=hidden_degrees,
               context_dim=context_dim, rng=rng)


#: Builders by name: ``BUILDERS[name](dim, **options) -> Flow``. ``"nsf"`` is the
#: autoregressive NSF, ``"nsf-coupling"`` the coupling one (``NSF(..., autoregressive=False)``).
BUILDERS = {
    "realnvp": RealNVP,
    "maf": MAF,
    "nsf": NSF,
    "nsf-coupling": _nsf_coupling,
    "glow": Glow,
    "planar": PlanarFlow,
    "radial": RadialFlow,
    "sylvester": SylvesterFlow,
    "bnaf": BNAF,
    "gf": GF,
    "naf": NAF,
    "unaf": UNAF,
    "sospf": SOSPF,
    "bpf": BPF,
}
