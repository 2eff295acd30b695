"""Constructor recipes: how the audit builds each peer class with randomised parameters.

``RECIPES[library][class]`` is a list of :class:`Recipe`: a builder ``factory(dim) ->
build(seed) -> check_layer keyword arguments`` (see :mod:`refflow.audit.peers`), the variant it
checks (``label``: an option, boundary points), and any option the layer needs with its reason.
``NO_RECIPE[library][class]`` gives the reason a class has none (a class in neither is listed
as ``skipped``, "no recipe"). ``ABSTRACT[library]`` names the bases that cannot be built.

The builders below construct each layer with its own constructor, tiny networks (width 8, one
hidden layer) and parameters drawn from ``normal(0, scale)`` so that no layer is checked at its
identity initialisation.
"""

from dataclasses import dataclass, field

from . import peers as P


@dataclass
class Recipe:
    """One way to build a class for the audit.

    Attributes
    ----------
    factory : callable
        ``factory(dim) -> build``, ``build(seed) -> dict`` of ``check_layer`` arguments.
    label : str
        The variant (an option, or the points: ``"x near and beyond the bound"``).
    sizes : tuple of int or None
        Dimensions to build (``None``: the audit's ``sizes``).
    dtypes : tuple of str or None
        Precisions to check (``None``: the audit's ``dtypes``).
    options : dict
        Further ``check_layer`` options (a tolerance with its reason in ``why``).
    why : str
        Why ``options`` differ from the defaults, or what the variant probes.
    heavy : bool
        Minutes of CPU per check: run only when the audit is asked to (``heavy=True``).
    """

    factory: object
    label: str = ""
    sizes: tuple = None
    dtypes: tuple = None
    options: dict = field(default_factory=dict)
    why: str = ""
    heavy: bool = False


def recipe(factory, label="", **kwargs):
    return Recipe(factory, label, **kwargs)


# zuko's numerical inverses: bisection on [-B, B] with ceil(log2(2B / 1e-6)) halvings, so the
# inverse is resolved to ~6e-7 (B = 10) and round trips hold to that, not to 1e-10; the
# finite differences of the inverse see a staircase of that step.
BISECTION = dict(rtol_round_trip=2e-6, rtol_log_det_sum=1e-5)
BISECTION_WHY = ("bisection inverse resolved to ~6e-7 (zuko's eps = 1e-6): round trips to 2e-6; "
                 "finite differences of the inverse cannot reach 1e-6")
#: TFP bijectors that derive shapes from their parameters' values run without jit.
EAGER_WHY = ("run without jit: TFP computes shapes from the parameters' values, which traced "
             "parameters do not have (TypeError: Shapes must be 1D sequences of concrete values)")
#: Bound of every spline recipe (``tail_bound``, ``bound``, ``interval``, ``range``).
B = 3.0
AT_BOUND = "x near (1e-4 B) and beyond the bound B = 3"
#: The bisection-based zuko flows take 1-3 minutes per check: opt-in, one size, float64.
HEAVY = dict(sizes=(3,), dtypes=("float64",), heavy=True)


def _zuko_flow(cls, **kw):
    return lambda d: P.zuko_flow(cls, dim=d, transforms=1, hidden_features=[8], **kw)


def _zuko_module(make, **kw):
    return lambda d: P.zuko_module(make, d, **kw)


def _bound(maker, make, **kw):
    """A recipe factory ``maker(make, dim, ...)`` with points near and beyond the bound."""
    return lambda d: maker(make, d, z=P.bound_points(B), **kw)


def near_singular_lu(layer):
    """nflows' LULinear with the raw diagonal of U at -7: softplus(-7) + 1e-3 ~ 1.9e-3, so the
    matrix is near-singular (condition ~1e3)."""
    import torch
    with torch.no_grad():
        layer.unconstrained_upper_diag.fill_(-7.0)


# ------------------------------------------------------------------------- nflows builders
def nf_maf(d):
    from nflows.transforms import MaskedAffineAutoregressiveTransform
    return MaskedAffineAutoregressiveTransform(d, 8, num_blocks=1, use_residual_blocks=False)


def nf_mrqs(d):
    from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as T
    return T(d, 8, num_bins=4, tails="linear", tail_bound=3.0, num_blocks=1,
             use_residual_blocks=False)


def nf_mquad(d):
    from nflows.transforms import MaskedPiecewiseQuadraticAutoregressiveTransform as T
    return T(d, 8, num_bins=4, tails="linear", tail_bound=3.0, num_blocks=1,
             use_residual_blocks=False)


def nf_mask(d):
    import torch
    return torch.arange(d) % 2


def nf_affine_coupling(d):
    from nflows.transforms import AffineCouplingTransform
    return AffineCouplingTransform(nf_mask(d), P.nflows_net)


def nf_rqs_coupling(d):
    from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform as T
    return T(nf_mask(d), P.nflows_net, num_bins=4, tails="linear", tail_bound=3.0)


def nf_cubic_coupling(d):
    from nflows.transforms import PiecewiseCubicCouplingTransform as T
    return T(nf_mask(d), P.nflows_net, num_bins=4, tails="linear", tail_bound=3.0)


def nf_lu(d):
    from nflows.transforms import LULinear
    return LULinear(d, identity_init=False)


def nf_svd(d):
    from nflows.transforms import SVDLinear
    return SVDLinear(d, num_householder=2, identity_init=False)


def nf_actnorm(d):
    import torch
    from nflows.transforms import ActNorm
    layer = ActNorm(d)
    layer.initialized = torch.tensor(True)     # no data-dependent initialisation in the check
    return layer


# ---------------------------------------------------------------------- normflows builders
def nfl_planar(d):
    import normflows as nf
    return nf.flows.Planar((d,), act="tanh")


def nfl_planar_leaky(d):
    import normflows as nf
    return nf.flows.Planar((d,), act="leaky_relu")


def nfl_radial(d):
    import normflows as nf
    return nf.flows.Radial((d,))


def nfl_maf(d):
    import normflows as nf
    return nf.flows.MaskedAffineAutoregressive(d, 8, num_blocks=1)


def nfl_affine_block(d):
    import normflows as nf
    return nf.flows.AffineCouplingBlock(nf.nets.MLP([d // 2, 8, 2 * (d - d // 2)]))


def nfl_crqs(d):
    import normflows as nf
    return nf.flows.CoupledRationalQuadraticSpline(d, 1, 8, num_bins=4, tail_bound=3.0)


def nfl_arqs(d):
    import normflows as nf
    return nf.flows.AutoregressiveRationalQuadraticSpline(d, 1, 8, num_bins=4, tail_bound=3.0)


def nfl_lu(d):
    import normflows as nf
    return nf.flows.LULinearPermute(d, identity_init=False)


# --------------------------------------------------------------------------- Pyro builders
def py_aar(d):
    from pyro.distributions.transforms import AffineAutoregressive
    return AffineAutoregressive(P.arn(d))


def py_aar_stable(d):
    from pyro.distributions.transforms import AffineAutoregressive
    return AffineAutoregressive(P.arn(d), stable=True)


def py_affine_coupling(d):
    from pyro.distributions.transforms import AffineCoupling
    from pyro.nn import DenseNN
    return AffineCoupling(1, DenseNN(1, [8], [d - 1, d - 1]))


def py_spline_linear(d):
    from pyro.distributions.transforms import Spline
    return Spline(d, count_bins=4, bound=3.0, order="linear")


def py_spline_quadratic(d):
    from pyro.distributions.transforms import Spline
    return Spline(d, count_bins=4, bound=3.0, order="quadratic")


def py_spline_ar(d):
    from pyro.distributions.transforms import SplineAutoregressive
    return SplineAutoregressive(d, P.arn(d, [4, 4, 3, 4]), count_bins=4, bound=3.0)


def py_spline_coupling(d):
    from pyro.distributions.transforms import SplineCoupling
    from pyro.nn import DenseNN
    k, rest = 4, d - 1
    return SplineCoupling(d, 1, DenseNN(1, [8], [rest * k, rest * k, rest * (k - 1), rest * k]),
                          count_bins=k, bound=3.0)


def py_planar(d):
    from pyro.distributions.transforms import Planar
    return Planar(d)


def py_radial(d):
    from pyro.distributions.transforms import Radial
    return Radial(d)


def py_sylvester(d):
    from pyro.distributions.transforms import Sylvester
    return Sylvester(d, count_transforms=2)


def py_bnaf(d):
    from pyro.distributions.transforms import BlockAutoregressive
    return BlockAutoregressive(d, hidden_factors=[2])


def py_polynomial(d):
    from pyro.distributions.transforms import Polynomial
    return Polynomial(P.arn(d, [(2 + 1) * 2]), d, count_degree=2, count_sum=2)


def py_naf(d):
    from pyro.distributions.transforms import NeuralAutoregressive
    return NeuralAutoregressive(P.arn(d, [8, 8, 8]), hidden_units=8)


def py_householder(d):
    from pyro.distributions.transforms import Householder
    return Householder(d, count_transforms=2)


def py_matrix_exp(d):
    from pyro.distributions.transforms import MatrixExponential
    return MatrixExponential(d)


def py_elu():
    from pyro.distributions.transforms import ELUTransform
    return P.TorchTransform(ELUTransform())


# ------------------------------------------------------------------------ FlowJAX builders
def fj_affine(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.Affine(jnp.zeros(d), jnp.ones(d))


def fj_rqs(key, d):
    import equinox as eqx
    import flowjax.bijections as B
    spline = eqx.filter_vmap(lambda _: B.RationalQuadraticSpline(knots=4, interval=3.0),
                             axis_size=d)(None)
    return B.Vmap(spline, in_axes=eqx.if_array(0))


def fj_maf(key, d):
    import flowjax.bijections as B
    return B.MaskedAutoregressive(key, transformer=B.Affine(), dim=d, nn_width=8, nn_depth=1)


def fj_coupling(key, d):
    import flowjax.bijections as B
    return B.Coupling(key, transformer=B.RationalQuadraticSpline(knots=4, interval=3.0),
                      untransformed_dim=1, dim=d, nn_width=8, nn_depth=1)


def fj_bnaf(key, d):
    import flowjax.bijections as B
    return B.BlockAutoregressiveNetwork(key, dim=d, depth=1, block_dim=2)


def fj_planar(key, d):
    import flowjax.bijections as B
    return B.Planar(key, dim=d)


def fj_triangular(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.TriangularAffine(jnp.zeros(d), jnp.eye(d))


def fj_leaky_tanh(key, d):
    import flowjax.bijections as B
    return B.LeakyTanh(3.0, shape=(d,))


def fj_householder(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.Householder(jnp.ones(d))


# ------------------------------------------------------------------------ distrax builders
def dx_rqs(p, d):
    import distrax
    return distrax.RationalQuadraticSpline(p["p"], range_min=-3.0, range_max=3.0)


def dx_scalar_affine(p, d):
    import distrax
    return distrax.ScalarAffine(shift=p["shift"], log_scale=p["log_scale"])


def dx_lu_affine(p, d):
    import distrax
    return distrax.LowerUpperTriangularAffine(p["matrix"], p["bias"])


def dx_unconstrained_affine(p, d):
    import distrax
    import jax.numpy as jnp
    return distrax.UnconstrainedAffine(jnp.eye(d, dtype=p["matrix"].dtype) + p["matrix"], p["bias"])


def dx_masked_coupling(p, d):
    import distrax
    import jax.numpy as jnp
    mask = jnp.arange(d) % 2 == 0

    def conditioner(x):
        h = jnp.tanh(x @ p["w"] + p["b"])
        return h[..., :d], h[..., d:]

    def bijector(params):
        shift, log_scale = params
        return distrax.ScalarAffine(shift=shift, log_scale=log_scale)

    return distrax.MaskedCoupling(mask, conditioner, bijector)


# -------------------------------------------------------------- further nflows constructors
def nf_tanh(d):
    from nflows.transforms import Tanh
    return Tanh()


def nf_sigmoid(d):
    from nflows.transforms import Sigmoid
    return Sigmoid()


def nf_leaky_relu(d):
    from nflows.transforms import LeakyReLU
    return LeakyReLU(negative_slope=0.1)


def nf_log_tanh(d):
    from nflows.transforms import LogTanh
    return LogTanh(cut_point=1)


def nf_reverse(d):
    from nflows.transforms import ReversePermutation
    return ReversePermutation(d)


def nf_random_permutation(d):
    from nflows.transforms import RandomPermutation
    return RandomPermutation(d)


def nf_naive_linear(d):
    from nflows.transforms import NaiveLinear
    return NaiveLinear(d)


def nf_qr(d):
    from nflows.transforms import QRLinear
    return QRLinear(d, num_householder=2)


def nf_householder(d):
    from nflows.transforms import HouseholderSequence
    return HouseholderSequence(d, num_transforms=2)


def nf_pointwise_affine(d):
    import torch
    from nflows.transforms import PointwiseAffineTransform
    return PointwiseAffineTransform(shift=torch.linspace(-1, 1, d, dtype=torch.float64),
                                    scale=torch.linspace(0.5, 2, d, dtype=torch.float64))


def nf_additive_coupling(d):
    from nflows.transforms import AdditiveCouplingTransform
    return AdditiveCouplingTransform(nf_mask(d), P.nflows_net)


def nf_quad_coupling(d):
    from nflows.transforms import PiecewiseQuadraticCouplingTransform as T
    return T(nf_mask(d), P.nflows_net, num_bins=4, tails="linear", tail_bound=3.0)


def nf_mcubic(d):
    from nflows.transforms import MaskedPiecewiseCubicAutoregressiveTransform as T
    return T(4, d, 8, num_blocks=1, use_residual_blocks=False)


def nf_rq_cdf(d):
    from nflows.transforms import PiecewiseRationalQuadraticCDF
    return PiecewiseRationalQuadraticCDF((d,), num_bins=4, tails="linear", tail_bound=3.0)


# -------------------------------------------------------------- further Pyro constructors
def py_softplus():
    from pyro.distributions.transforms import SoftplusTransform
    return P.TorchTransform(SoftplusTransform())


def py_leaky_relu():
    from pyro.distributions.transforms import LeakyReLUTransform
    return P.TorchTransform(LeakyReLUTransform())


def py_permute(d):
    import torch
    from pyro.distributions.transforms import Permute
    return P.TorchTransform(Permute(torch.arange(d - 1, -1, -1)))


def py_dct(d):
    from pyro.distributions.transforms import DiscreteCosineTransform
    return P.TorchTransform(DiscreteCosineTransform())


def py_haar(d):
    from pyro.distributions.transforms import HaarTransform
    return P.TorchTransform(HaarTransform())


def py_lower_cholesky_affine(d):
    import torch
    from pyro.distributions.transforms import LowerCholeskyAffine
    tril = torch.eye(d, dtype=torch.float64) + 0.3 * torch.tril(
        torch.ones(d, d, dtype=torch.float64), -1)
    return P.TorchTransform(LowerCholeskyAffine(torch.linspace(-1, 1, d, dtype=torch.float64),
                                                tril))


# ----------------------------------------------------------- further FlowJAX constructors
def fj_plain(name):
    def make(key, d):
        import flowjax.bijections as B
        return getattr(B, name)((d,))
    return make


def fj_exp(key, d):
    import flowjax.bijections as B
    return B.Exp((d,))


def fj_loc(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.Loc(jnp.zeros(d))


def fj_scale(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.Scale(jnp.ones(d))


def fj_permute(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.Permute(jnp.arange(d)[::-1])


def fj_dct(key, d):
    import flowjax.bijections as B
    return B.DiscreteCosine((d,))


# ----------------------------------------------------------- further distrax constructors
def dx_elementwise(name):
    def make(p, d):
        import distrax
        return distrax.Block(getattr(distrax, name)(), 1)
    return make


def dx_shift(p, d):
    import distrax
    return distrax.Block(distrax.Shift(p["shift"]), 1)


def dx_diag_linear(p, d):
    import distrax
    import jax.numpy as jnp
    return distrax.DiagLinear(jnp.exp(p["log_diag"]))


def dx_triangular_linear(p, d):
    import distrax
    import jax.numpy as jnp
    return distrax.TriangularLinear(jnp.eye(d, dtype=p["matrix"].dtype) + p["matrix"])


def dx_diag_low_rank(p, d):
    import distrax
    import jax.numpy as jnp
    return distrax.DiagPlusLowRankLinear(jnp.exp(p["log_diag"]), p["u"], p["v"])


def dx_split_coupling(p, d):
    import distrax
    import jax.numpy as jnp
    k = d // 2

    def conditioner(x):
        h = jnp.tanh(x @ p["w"] + p["b"])
        return h[..., :d - k], h[..., d - k:]

    def bijector(params):
        shift, log_scale = params
        return distrax.ScalarAffine(shift=shift, log_scale=log_scale)

    return distrax.SplitCoupling(k, 1, conditioner, bijector)


# --------------------------------------------------------------------- TFP constructors
def tfp_elementwise(name, **kwargs):
    def make(p, d):
        from tensorflow_probability.substrates import jax as tfp
        return getattr(tfp.bijectors, name)(**kwargs)
    return make


def tfp_shift(p, d):
    from tensorflow_probability.substrates import jax as tfp
    return tfp.bijectors.Shift(p["shift"])


def tfp_scale(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    return tfp.bijectors.Scale(jnp.exp(p["log_scale"]))


def tfp_sinh_arcsinh(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    return tfp.bijectors.SinhArcsinh(skewness=p["skew"], tailweight=jnp.exp(p["log_tail"]))


def tfp_tril(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    tril = jnp.tril(p["m"], -1) + jnp.diag(jnp.exp(jnp.diag(p["m"])))
    return tfp.bijectors.ScaleMatvecTriL(scale_tril=tril)


def tfp_lu(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    return tfp.bijectors.ScaleMatvecLU(jnp.eye(d, dtype=p["lu"].dtype) + p["lu"],
                                       jnp.arange(d))


def tfp_diag(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    return tfp.bijectors.ScaleMatvecDiag(jnp.exp(p["log_diag"]))


def tfp_rqs(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    widths = 2 * B * jnp.exp(p["w"]) / jnp.exp(p["w"]).sum(-1, keepdims=True)
    heights = 2 * B * jnp.exp(p["h"]) / jnp.exp(p["h"]).sum(-1, keepdims=True)
    slopes = jnp.exp(p["s"])
    return tfp.bijectors.RationalQuadraticSpline(widths, heights, slopes, range_min=-B)


def tfp_maf(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    mask = jnp.tril(jnp.ones((d, d), dtype=p["w"].dtype), -1)   # output i sees inputs j < i

    def shift_and_log_scale(x):
        h = jnp.tanh(x @ (mask * p["w"]).T + p["b"])
        return h, 0.5 * jnp.tanh(h * p["a"])

    return tfp.bijectors.MaskedAutoregressiveFlow(shift_and_log_scale_fn=shift_and_log_scale)


def tfp_real_nvp(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    k = d // 2

    def shift_and_log_scale(x, output_units):
        h = jnp.tanh(x @ p["w"][:k, :output_units] + p["b"][:output_units])
        return h, 0.5 * h

    return tfp.bijectors.RealNVP(num_masked=k, shift_and_log_scale_fn=shift_and_log_scale)


# ------------------------------------------------------------- conditional builders
#: Variant label of the conditional recipes (the context features).
CTX = P.CONTEXT
CONTEXT = f"context={CTX}"
CONTEXT_WHY = ("a fixed random context (one standard normal vector shared by the points); "
               "the checks differentiate with respect to the input and the parameters")
#: Conditional recipes are built at one size (the layer's own checks run at every size).
COND = dict(sizes=(3,), why=CONTEXT_WHY)


def nf_maf_ctx(d):
    from nflows.transforms import MaskedAffineAutoregressiveTransform
    return MaskedAffineAutoregressiveTransform(d, 8, context_features=CTX, num_blocks=1,
                                               use_residual_blocks=False)


def nf_mrqs_ctx(d):
    from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as T
    return T(d, 8, context_features=CTX, num_bins=4, tails="linear", tail_bound=3.0,
             num_blocks=1, use_residual_blocks=False)


def nf_net_ctx(in_features, out_features):
    from nflows.nn.nets import ResidualNet
    return ResidualNet(in_features, out_features, hidden_features=8, context_features=CTX,
                       num_blocks=1)


def nf_affine_coupling_ctx(d):
    from nflows.transforms import AffineCouplingTransform
    return AffineCouplingTransform(nf_mask(d), nf_net_ctx)


def nf_rqs_coupling_ctx(d):
    from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform as T
    return T(nf_mask(d), nf_net_ctx, num_bins=4, tails="linear", tail_bound=3.0)


def nfl_maf_ctx(d):
    import normflows as nf
    return nf.flows.MaskedAffineAutoregressive(d, 8, context_features=CTX, num_blocks=1)


def nfl_crqs_ctx(d):
    import normflows as nf
    return nf.flows.CoupledRationalQuadraticSpline(d, 1, 8, num_context_channels=CTX,
                                                   num_bins=4, tail_bound=3.0)


def nfl_arqs_ctx(d):
    import normflows as nf
    return nf.flows.AutoregressiveRationalQuadraticSpline(d, 1, 8, num_context_channels=CTX,
                                                          num_bins=4, tail_bound=3.0)


def py_conditional(name, **kw):
    """``pyro.distributions.transforms.conditional_<name>(d, CTX, hidden_dims=[8], **kw)``."""
    def make(d):
        import pyro.distributions.transforms as T
        return getattr(T, f"conditional_{name}")(d, CTX, hidden_dims=[8], **kw)
    return make


def fj_maf_ctx(key, d):
    import flowjax.bijections as B
    return B.MaskedAutoregressive(key, transformer=B.Affine(), dim=d, cond_dim=CTX, nn_width=8,
                                  nn_depth=1)


def fj_coupling_ctx(key, d):
    import flowjax.bijections as B
    return B.Coupling(key, transformer=B.RationalQuadraticSpline(knots=4, interval=3.0),
                      untransformed_dim=1, dim=d, cond_dim=CTX, nn_width=8, nn_depth=1)


def fj_bnaf_ctx(key, d):
    import flowjax.bijections as B
    return B.BlockAutoregressiveNetwork(key, dim=d, cond_dim=CTX, depth=1, block_dim=2)


def fj_planar_ctx(key, d):
    import flowjax.bijections as B
    return B.Planar(key, dim=d, cond_dim=CTX, width_size=8, depth=1)


def tfp_maf_ctx(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    mask = jnp.tril(jnp.ones((d, d), dtype=p["w"].dtype), -1)   # output i sees inputs j < i

    def shift_and_log_scale(x, conditional_input):
        h = jnp.tanh(x @ (mask * p["w"]).T + conditional_input @ p["c"] + p["b"])
        return h, 0.5 * jnp.tanh(h * p["a"])

    return tfp.bijectors.MaskedAutoregressiveFlow(shift_and_log_scale_fn=shift_and_log_scale)


def tfp_real_nvp_ctx(p, d):
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    k = d // 2

    def shift_and_log_scale(x, output_units, conditional_input):
        h = jnp.tanh(x @ p["w"][:k, :output_units] + conditional_input @ p["c"][:, :output_units]
                     + p["b"][:output_units])
        return h, 0.5 * h

    return tfp.bijectors.RealNVP(num_masked=k, shift_and_log_scale_fn=shift_and_log_scale)


#: Conditional recipes, added to :data:`RECIPES` below: ``{library: {class: [Recipe]}}``.
def _conditional():
    zuko = {cls: [recipe(_zuko_flow(cls, context=CTX), CONTEXT, **COND)]
            for cls in ("MAF", "NSF", "RealNVP", "NICE")}
    zuko["NSF"][0] = recipe(_zuko_flow("NSF", bins=4, context=CTX), CONTEXT, **COND)
    nflows = {
        "MaskedAffineAutoregressiveTransform": [recipe(
            lambda d: P.nflows_transform(nf_maf_ctx, d, context=CTX), CONTEXT, **COND)],
        "MaskedPiecewiseRationalQuadraticAutoregressiveTransform": [recipe(
            lambda d: P.nflows_transform(nf_mrqs_ctx, d, scale=0.5, points=1.5, context=CTX),
            CONTEXT, **COND)],
        "AffineCouplingTransform": [recipe(
            lambda d: P.nflows_transform(nf_affine_coupling_ctx, d, context=CTX), CONTEXT,
            **COND)],
        "PiecewiseRationalQuadraticCouplingTransform": [recipe(
            lambda d: P.nflows_transform(nf_rqs_coupling_ctx, d, scale=0.5, points=1.5,
                                         context=CTX), CONTEXT, **COND)],
    }
    normflows = {
        "MaskedAffineAutoregressive": [recipe(
            lambda d: P.normflows_flow(nfl_maf_ctx, d, scale=0.3, context=CTX), CONTEXT, **COND)],
        "CoupledRationalQuadraticSpline": [recipe(
            lambda d: P.normflows_flow(nfl_crqs_ctx, d, scale=0.4, points=1.5, context=CTX),
            CONTEXT, **COND)],
        "AutoregressiveRationalQuadraticSpline": [recipe(
            lambda d: P.normflows_flow(nfl_arqs_ctx, d, scale=0.4, points=1.5, context=CTX),
            CONTEXT, **COND)],
    }
    spline = dict(scale=0.5, points=1.5, context=CTX)
    pyro = {
        "ConditionalAffineAutoregressive": [recipe(
            lambda d: P.pyro_transform(py_conditional("affine_autoregressive"), d, context=CTX),
            CONTEXT, **COND)],
        "ConditionalAffineCoupling": [recipe(
            lambda d: P.pyro_transform(py_conditional("affine_coupling"), d, context=CTX),
            CONTEXT, **COND)],
        "ConditionalSpline": [recipe(
            lambda d: P.pyro_transform(py_conditional("spline", count_bins=4, bound=B), d,
                                       **spline), CONTEXT + ", order=linear",
            options=dict(sum_log_det=True), **COND)],
        "ConditionalSplineAutoregressive": [recipe(
            lambda d: P.pyro_transform(py_conditional("spline_autoregressive", count_bins=4,
                                                      bound=B), d, **spline),
            CONTEXT, options=dict(sum_log_det=True), **COND)],
        "ConditionalPlanar": [recipe(
            lambda d: P.pyro_transform(py_conditional("planar"), d, forward_only=True,
                                       context=CTX), CONTEXT + ", forward only", **COND)],
        "ConditionalRadial": [recipe(
            lambda d: P.pyro_transform(py_conditional("radial"), d, forward_only=True,
                                       context=CTX), CONTEXT + ", forward only", **COND)],
        "ConditionalHouseholder": [recipe(
            lambda d: P.pyro_transform(py_conditional("householder", count_transforms=2), d,
                                       context=CTX), CONTEXT, **COND)],
        "ConditionalMatrixExponential": [recipe(
            lambda d: P.pyro_transform(py_conditional("matrix_exponential"), d, context=CTX),
            CONTEXT, options=dict(rtol_round_trip=1e-8), sizes=(3,),
            why=CONTEXT_WHY + "; exp(W) as a Taylor series of 8 terms: forward and inverse are "
            "inverse only to ~|W|^9 / 9!, by design")],
        "ConditionalNeuralAutoregressive": [recipe(
            lambda d: P.pyro_transform(py_conditional("neural_autoregressive", width=8), d,
                                       forward_only=True, context=CTX),
            CONTEXT + ", forward only", **COND)],
    }
    flowjax = {
        "MaskedAutoregressive": [recipe(
            lambda d: P.flowjax_bijection(fj_maf_ctx, d, scale=0.3, context=CTX), CONTEXT,
            **COND)],
        "Coupling": [recipe(
            lambda d: P.flowjax_bijection(fj_coupling_ctx, d, scale=0.3, context=CTX),
            CONTEXT + ", RationalQuadraticSpline transformer", **COND)],
        "BlockAutoregressiveNetwork": [recipe(
            lambda d: P.flowjax_bijection(fj_bnaf_ctx, d, scale=0.3, forward_only=True,
                                          context=CTX), CONTEXT + ", forward only", **COND)],
        "Planar": [recipe(
            lambda d: P.flowjax_bijection(fj_planar_ctx, d, forward_only=True, context=CTX),
            CONTEXT + ", forward only", **COND)],
    }
    tfp = {
        "MaskedAutoregressiveFlow": [recipe(lambda d: P.tfp_bijector(
            tfp_maf_ctx, lambda d: {"w": (d, d), "c": (CTX, d), "b": (d,), "a": (d,)}, d,
            scale=0.5, context=CTX), CONTEXT + " (conditional_input)", **COND)],
        "RealNVP": [recipe(lambda d: P.tfp_bijector(
            tfp_real_nvp_ctx, lambda d: {"w": (d // 2, d), "c": (CTX, d), "b": (d,)}, d,
            scale=0.5, context=CTX), CONTEXT + " (conditional_input)", **COND)],
    }
    return {"zuko": zuko, "nflows": nflows, "normflows": normflows, "pyro": pyro,
            "flowjax": flowjax, "tfp": tfp}


# --------------------------------------------------------------------------------- the table
RECIPES = {
    "zuko": {
        "MAF": [recipe(_zuko_flow("MAF"))],
        "NSF": [recipe(_zuko_flow("NSF", bins=4)),
                recipe(_zuko_flow("NSF", bins=4, z=P.bound_points(5.0)),
                       "x near (1e-4 B) and beyond zuko's bound B = 5")],
        "RealNVP": [recipe(_zuko_flow("RealNVP"))],
        "NICE": [recipe(_zuko_flow("NICE"))],
        "NAF": [recipe(lambda d: P.zuko_flow("NAF", dim=d, transforms=1, signal=4,
                                             hidden_features=[8], network={"hidden_features": [8]}),
                       options=BISECTION, why=BISECTION_WHY, **HEAVY)],
        "UNAF": [recipe(lambda d: P.zuko_flow("UNAF", dim=d, transforms=1, signal=4,
                                              hidden_features=[8],
                                              network={"hidden_features": [8]}),
                        options=BISECTION, **HEAVY,
                        why=BISECTION_WHY + "; the log-det is checked at the standard 1e-6: it is "
                        "the integrand's exact log, the map its 32-node Gauss-Legendre quadrature")],
        "SOSPF": [recipe(_zuko_flow("SOSPF"), options=BISECTION, why=BISECTION_WHY, **HEAVY)],
        "BPF": [recipe(_zuko_flow("BPF"), options=BISECTION, why=BISECTION_WHY, **HEAVY)],
        "GF": [recipe(_zuko_flow("GF"), options=BISECTION, why=BISECTION_WHY,
                      dtypes=("float64",))],
        "MonotonicRQSTransform": [
            recipe(_zuko_module(P.ZUKO_RQS, scale=1.0), options=dict(sum_log_det=True)),
            recipe(_zuko_module(P.ZUKO_RQS, scale=1.0, z=P.bound_points(B)), AT_BOUND,
                   options=dict(sum_log_det=True))],
        "BoundedBernsteinTransform": [
            recipe(_zuko_module(P.ZUKO_BERNSTEIN, scale=1.0),
                   options=dict(sum_log_det=True, **BISECTION), why=BISECTION_WHY),
            recipe(_zuko_module(P.ZUKO_BERNSTEIN, scale=1.0, z=P.zuko_bernstein_at_switch),
                   "x = -B + 2 B eps, where the polynomial hands over to the linear extension",
                   options=dict(sum_log_det=True, **BISECTION), why=BISECTION_WHY,
                   dtypes=("float64",))],
        "MonotonicAffineTransform": [recipe(_zuko_module(P.ZUKO_AFFINE, scale=1.0),
                                            options=dict(sum_log_det=True))],
        "LULinearTransform": [recipe(_zuko_module(P.ZUKO_LU))],
        "RotationTransform": [recipe(_zuko_module(P.ZUKO_ROTATION))],
        "GaussianizationTransform": [recipe(_zuko_module(P.ZUKO_GAUSSIANIZATION),
                                            options=dict(sum_log_det=True, **BISECTION),
                                            why=BISECTION_WHY)],
        "SignedPowerTransform": [recipe(_zuko_module(P.ZUKO_SIGNED_POWER),
                                        options=dict(sum_log_det=True))],
        "SOSPolynomialTransform": [recipe(_zuko_module(P.ZUKO_SOS, scale=1.0),
                                          options=dict(sum_log_det=True, **BISECTION),
                                          why=BISECTION_WHY, dtypes=("float64",))],
    },
    "nflows": {
        "Tanh": [recipe(lambda d: P.nflows_transform(nf_tanh, d))],
        "Sigmoid": [recipe(lambda d: P.nflows_transform(nf_sigmoid, d)),
                    recipe(lambda d: P.nflows_transform(nf_sigmoid, d, z=P.wide_points(6.0)),
                           "wide points (sd 6)", dtypes=("float64",),
                           why="float64 only: float32 saturates at |x| ~ 17; sd 6 keeps "
                           "1 - sigmoid(x) representable in float64 (it rounds to 0 beyond "
                           "|x| ~ 37, where no inverse can recover x)")],
        "LeakyReLU": [recipe(lambda d: P.nflows_transform(nf_leaky_relu, d))],
        "LogTanh": [recipe(lambda d: P.nflows_transform(nf_log_tanh, d))],
        "ReversePermutation": [recipe(lambda d: P.nflows_transform(nf_reverse, d))],
        "RandomPermutation": [recipe(lambda d: P.nflows_transform(nf_random_permutation, d))],
        "NaiveLinear": [recipe(lambda d: P.nflows_transform(nf_naive_linear, d))],
        "QRLinear": [recipe(lambda d: P.nflows_transform(nf_qr, d))],
        "HouseholderSequence": [recipe(lambda d: P.nflows_transform(nf_householder, d))],
        "PointwiseAffineTransform": [recipe(lambda d: P.nflows_transform(nf_pointwise_affine, d))],
        "AdditiveCouplingTransform": [recipe(lambda d: P.nflows_transform(nf_additive_coupling,
                                                                          d))],
        "PiecewiseQuadraticCouplingTransform": [
            recipe(lambda d: P.nflows_transform(nf_quad_coupling, d, scale=0.5, points=1.5)),
            recipe(_bound(P.nflows_transform, nf_quad_coupling, scale=0.5), AT_BOUND)],
        "MaskedPiecewiseCubicAutoregressiveTransform": [
            recipe(lambda d: P.nflows_transform(nf_mcubic, d, scale=0.5,
                                                z=lambda seed, dim: P.uniform_points(seed, dim)),
                   "x in (0, 1) (no tails)")],
        "PiecewiseRationalQuadraticCDF": [
            recipe(lambda d: P.nflows_transform(nf_rq_cdf, d, scale=0.5, points=1.5)),
            recipe(_bound(P.nflows_transform, nf_rq_cdf, scale=0.5), AT_BOUND)],
        "MaskedAffineAutoregressiveTransform": [recipe(lambda d: P.nflows_transform(nf_maf, d))],
        "MaskedPiecewiseRationalQuadraticAutoregressiveTransform": [
            recipe(lambda d: P.nflows_transform(nf_mrqs, d, scale=0.5, points=1.5)),
            recipe(_bound(P.nflows_transform, nf_mrqs, scale=0.5), AT_BOUND)],
        "MaskedPiecewiseQuadraticAutoregressiveTransform": [
            recipe(lambda d: P.nflows_transform(nf_mquad, d, scale=0.5, points=1.5)),
            recipe(_bound(P.nflows_transform, nf_mquad, scale=0.5), AT_BOUND)],
        "AffineCouplingTransform": [recipe(lambda d: P.nflows_transform(nf_affine_coupling, d),
                                           sizes=None)],
        "PiecewiseRationalQuadraticCouplingTransform": [
            recipe(lambda d: P.nflows_transform(nf_rqs_coupling, d, scale=0.5, points=1.5)),
            recipe(_bound(P.nflows_transform, nf_rqs_coupling, scale=0.5), AT_BOUND)],
        "PiecewiseCubicCouplingTransform": [
            recipe(lambda d: P.nflows_transform(nf_cubic_coupling, d, scale=0.5, points=1.5)),
            recipe(_bound(P.nflows_transform, nf_cubic_coupling, scale=0.5), AT_BOUND)],
        "LULinear": [recipe(lambda d: P.nflows_transform(nf_lu, d)),
                     recipe(lambda d: P.nflows_transform(nf_lu, d, post=near_singular_lu),
                            "near-singular: diagonal of U ~2e-3", dtypes=("float64",),
                            why="float64 only: a float32 solve with a matrix of condition "
                            "1e3-1e5 is off its float64 twin by cond x eps32, beyond any fixed "
                            "float32 tolerance")],
        "SVDLinear": [recipe(lambda d: P.nflows_transform(nf_svd, d))],
        "BatchNorm": [recipe(lambda d: P.nflows_transform(P.nflows_batchnorm, d, eval_mode=True))],
        "ActNorm": [recipe(lambda d: P.nflows_transform(nf_actnorm, d))],
    },
    "normflows": {
        "Planar": [recipe(lambda d: P.normflows_flow(nfl_planar, d, forward_only=True)),
                   recipe(lambda d: P.normflows_flow(nfl_planar_leaky, d), "act=leaky_relu"),
                   recipe(lambda d: P.normflows_flow(nfl_planar, d, forward_only=True,
                                                     post=P.normflows_planar_overflow),
                          "w.u = 800 (a saturated tanh layer)", dtypes=("float64",))],
        "Radial": [recipe(lambda d: P.normflows_flow(nfl_radial, d, forward_only=True))],
        "MaskedAffineAutoregressive": [recipe(lambda d: P.normflows_flow(nfl_maf, d, scale=0.3))],
        "AffineCouplingBlock": [
            recipe(lambda d: P.normflows_flow(nfl_affine_block, d), sizes=(2, 4)),
            recipe(lambda d: P.normflows_flow(nfl_affine_block, d, z=P.wide_points(30.0)),
                   "wide points (sd 30)", sizes=(4,), dtypes=("float64",),
                   why="float64 only: at sd 30 the random network saturates the scale at "
                   "~exp(-18), so the inverse amplifies the float32 rounding of x by ~1e8 and "
                   "no float32 implementation can be compared with its twin there")],
        "CoupledRationalQuadraticSpline": [
            recipe(lambda d: P.normflows_flow(nfl_crqs, d, scale=0.4, points=1.5)),
            recipe(_bound(P.normflows_flow, nfl_crqs, scale=0.4), AT_BOUND)],
        "AutoregressiveRationalQuadraticSpline": [
            recipe(lambda d: P.normflows_flow(nfl_arqs, d, scale=0.4, points=1.5)),
            recipe(_bound(P.normflows_flow, nfl_arqs, scale=0.4), AT_BOUND)],
        "LULinearPermute": [recipe(lambda d: P.normflows_flow(nfl_lu, d))],
    },
    "pyro": {
        "SoftplusTransform": [recipe(lambda d: P.plain_transform(py_softplus, d),
                                     options=dict(sum_log_det=True))],
        "LeakyReLUTransform": [recipe(lambda d: P.plain_transform(py_leaky_relu, d),
                                      options=dict(sum_log_det=True))],
        "Permute": [recipe(lambda d: P.plain_transform(lambda: py_permute(d), d))],
        "DiscreteCosineTransform": [recipe(lambda d: P.plain_transform(lambda: py_dct(d), d),
                                           options=dict(sum_log_det=True))],
        "HaarTransform": [recipe(lambda d: P.plain_transform(lambda: py_haar(d), d),
                                 options=dict(sum_log_det=True))],
        "LowerCholeskyAffine": [recipe(lambda d: P.plain_transform(
            lambda: py_lower_cholesky_affine(d), d), dtypes=("float64",),
            why="float64 only: its loc and scale_tril are plain tensor attributes, not module "
            "buffers, so the float32 copy of the module cannot be made by .float()")],
        "AffineAutoregressive": [recipe(lambda d: P.pyro_transform(py_aar, d)),
                                 recipe(lambda d: P.pyro_transform(py_aar_stable, d),
                                        "stable=True")],
        "AffineCoupling": [recipe(lambda d: P.pyro_transform(py_affine_coupling, d))],
        "Spline": [
            recipe(lambda d: P.pyro_transform(py_spline_linear, d, scale=0.5, points=1.5),
                   "order=linear", options=dict(sum_log_det=True)),
            recipe(lambda d: P.pyro_transform(py_spline_quadratic, d, scale=0.5, points=1.5),
                   "order=quadratic", options=dict(sum_log_det=True)),
            recipe(_bound(P.pyro_transform, py_spline_linear, scale=0.5),
                   "order=linear, " + AT_BOUND, options=dict(sum_log_det=True)),
            recipe(lambda d: P.pyro_transform(py_spline_linear, d, scale=0.5,
                                              z=P.pyro_spline_at_bound),
                   "order=linear, x = +-B, smooth=True",
                   options=dict(sum_log_det=True, smooth=True),
                   why="the spline claims a C1 map (identity beyond the bound): a kink at "
                   "+-B is a failure", sizes=(3,)),
            recipe(lambda d: P.pyro_transform(py_spline_quadratic, d, scale=0.5,
                                              z=P.pyro_spline_at_bound),
                   "order=quadratic, x = +-B, smooth=True",
                   options=dict(sum_log_det=True, smooth=True),
                   why="the spline claims a C1 map (identity beyond the bound): a kink at "
                   "+-B is a failure", sizes=(3,))],
        "SplineAutoregressive": [
            recipe(lambda d: P.pyro_transform(py_spline_ar, d, scale=0.5, points=1.5),
                   options=dict(sum_log_det=True)),
            recipe(_bound(P.pyro_transform, py_spline_ar, scale=0.5), AT_BOUND,
                   options=dict(sum_log_det=True))],
        "SplineCoupling": [
            recipe(lambda d: P.pyro_transform(py_spline_coupling, d, scale=0.5, points=1.5),
                   options=dict(sum_log_det=True))],
        "Planar": [recipe(lambda d: P.pyro_transform(py_planar, d, forward_only=True))],
        "Radial": [recipe(lambda d: P.pyro_transform(py_radial, d, forward_only=True))],
        "Sylvester": [recipe(lambda d: P.pyro_transform(py_sylvester, d, forward_only=True))],
        "BlockAutoregressive": [recipe(lambda d: P.pyro_transform(py_bnaf, d, forward_only=True))],
        "Polynomial": [recipe(lambda d: P.pyro_transform(py_polynomial, d, forward_only=True),
                              options=dict(rtol_log_det=1e-5),
                              why="log(f' + 1e-8) by design: a bias 1e-8 / f' (~1e-6 relative "
                              "here); the gradients are exact")],
        "NeuralAutoregressive": [recipe(lambda d: P.pyro_transform(py_naf, d,
                                                                   forward_only=True))],
        "Householder": [recipe(lambda d: P.pyro_transform(py_householder, d))],
        "BatchNorm": [recipe(lambda d: P.pyro_transform(P.pyro_batchnorm, d,
                                                        post=P.pyro_batchnorm_gamma),
                             options=dict(sum_log_det=True))],
        "MatrixExponential": [recipe(lambda d: P.pyro_transform(py_matrix_exp, d),
                                     options=dict(rtol_round_trip=1e-8),
                                     why="exp(W) as a Taylor series of 8 terms: forward and "
                                     "inverse are inverse only to ~|W|^9 / 9!, by design")],
        "ELUTransform": [recipe(lambda d: P.plain_transform(py_elu, d),
                                options=dict(sum_log_det=True)),
                         recipe(lambda d: P.plain_transform(py_elu, d, z=P.wide_points(30.0)),
                                "wide points (sd 30)", options=dict(sum_log_det=True))],
    },
    "flowjax": {
        "Exp": [recipe(lambda d: P.flowjax_bijection(fj_exp, d))],
        "Tanh": [recipe(lambda d: P.flowjax_bijection(fj_plain("Tanh"), d))],
        "Sigmoid": [recipe(lambda d: P.flowjax_bijection(fj_plain("Sigmoid"), d))],
        "SoftPlus": [recipe(lambda d: P.flowjax_bijection(fj_plain("SoftPlus"), d))],
        "Flip": [recipe(lambda d: P.flowjax_bijection(fj_plain("Flip"), d))],
        "Identity": [recipe(lambda d: P.flowjax_bijection(fj_plain("Identity"), d))],
        "Loc": [recipe(lambda d: P.flowjax_bijection(fj_loc, d))],
        "Scale": [recipe(lambda d: P.flowjax_bijection(fj_scale, d))],
        "Permute": [recipe(lambda d: P.flowjax_bijection(fj_permute, d))],
        "DiscreteCosine": [recipe(lambda d: P.flowjax_bijection(fj_dct, d))],
        "Affine": [recipe(lambda d: P.flowjax_bijection(fj_affine, d))],
        "RationalQuadraticSpline": [
            recipe(lambda d: P.flowjax_bijection(fj_rqs, d, scale=0.5, points=1.0),
                   "vmapped over dimensions"),
            recipe(_bound(P.flowjax_bijection, fj_rqs, scale=0.5),
                   "vmapped over dimensions, " + AT_BOUND)],
        "MaskedAutoregressive": [recipe(lambda d: P.flowjax_bijection(fj_maf, d, scale=0.3))],
        "Coupling": [recipe(lambda d: P.flowjax_bijection(fj_coupling, d, scale=0.3, points=1.0),
                            "RationalQuadraticSpline transformer")],
        "BlockAutoregressiveNetwork": [recipe(lambda d: P.flowjax_bijection(
            fj_bnaf, d, scale=0.3, forward_only=True), "forward only",
            why="no inverse of its own (FlowJAX raises NotImplementedError; a numerical one "
            "needs the NumericalInverse wrapper, no recipe yet)")],
        "Planar": [recipe(lambda d: P.flowjax_bijection(fj_planar, d, forward_only=True))],
        "TriangularAffine": [recipe(lambda d: P.flowjax_bijection(fj_triangular, d))],
        "LeakyTanh": [recipe(lambda d: P.flowjax_bijection(fj_leaky_tanh, d)),
                      recipe(lambda d: P.flowjax_bijection(fj_leaky_tanh, d,
                                                           z=P.wide_points(30.0)),
                             "wide points (sd 30)")],
        "Householder": [recipe(lambda d: P.flowjax_bijection(fj_householder, d))],
    },
    "distrax": {
        "Tanh": [recipe(lambda d: P.distrax_bijector(dx_elementwise("Tanh"), lambda d: {}, d))],
        "Sigmoid": [recipe(lambda d: P.distrax_bijector(dx_elementwise("Sigmoid"),
                                                        lambda d: {}, d))],
        "GumbelCDF": [recipe(lambda d: P.distrax_bijector(dx_elementwise("GumbelCDF"),
                                                          lambda d: {}, d))],
        "Shift": [recipe(lambda d: P.distrax_bijector(dx_shift, lambda d: {"shift": (d,)}, d))],
        "DiagLinear": [recipe(lambda d: P.distrax_bijector(dx_diag_linear,
                                                           lambda d: {"log_diag": (d,)}, d))],
        "TriangularLinear": [recipe(lambda d: P.distrax_bijector(
            dx_triangular_linear, lambda d: {"matrix": (d, d)}, d))],
        "DiagPlusLowRankLinear": [recipe(lambda d: P.distrax_bijector(
            dx_diag_low_rank, lambda d: {"log_diag": (d,), "u": (d, 2), "v": (d, 2)}, d))],
        "SplitCoupling": [recipe(lambda d: P.distrax_bijector(
            dx_split_coupling, lambda d: {"w": (d // 2, 2 * (d - d // 2)),
                                          "b": (2 * (d - d // 2),)}, d),
            "ScalarAffine inner bijector")],
        "RationalQuadraticSpline": [
            recipe(lambda d: P.distrax_bijector(dx_rqs, lambda d: {"p": (d, 3 * 4 + 1)}, d,
                                                scale=0.5), options=dict(sum_log_det=True)),
            recipe(lambda d: P.distrax_bijector(dx_rqs, lambda d: {"p": (d, 3 * 4 + 1)}, d,
                                                scale=0.5, z=P.bound_points(B)), AT_BOUND,
                   options=dict(sum_log_det=True))],
        "ScalarAffine": [recipe(lambda d: P.distrax_bijector(
            dx_scalar_affine, lambda d: {"shift": (d,), "log_scale": (d,)}, d),
            options=dict(sum_log_det=True))],
        "LowerUpperTriangularAffine": [recipe(lambda d: P.distrax_bijector(
            dx_lu_affine, lambda d: {"matrix": (d, d), "bias": (d,)}, d))],
        "UnconstrainedAffine": [recipe(lambda d: P.distrax_bijector(
            dx_unconstrained_affine, lambda d: {"matrix": (d, d), "bias": (d,)}, d))],
        "MaskedCoupling": [recipe(lambda d: P.distrax_bijector(
            dx_masked_coupling, lambda d: {"w": (d, 2 * d), "b": (2 * d,)}, d),
            "ScalarAffine inner bijector")],
    },
    "tfp": {
        **{name: [recipe(lambda d, name=name: P.tfp_bijector(tfp_elementwise(name), lambda d: {},
                                                            d))]
           for name in ("Exp", "Sigmoid", "Softplus", "Tanh", "Sinh", "Softsign", "Identity",
                        "NormalCDF", "Cumsum")},
        "Shift": [recipe(lambda d: P.tfp_bijector(tfp_shift, lambda d: {"shift": (d,)}, d))],
        "Scale": [recipe(lambda d: P.tfp_bijector(tfp_scale, lambda d: {"log_scale": (d,)}, d))],
        "SinhArcsinh": [recipe(lambda d: P.tfp_bijector(
            tfp_sinh_arcsinh, lambda d: {"skew": (d,), "log_tail": (d,)}, d))],
        "ScaleMatvecTriL": [recipe(lambda d: P.tfp_bijector(tfp_tril, lambda d: {"m": (d, d)},
                                                            d))],
        "ScaleMatvecLU": [recipe(lambda d: P.tfp_bijector(tfp_lu, lambda d: {"lu": (d, d)}, d,
                                                          eager=True), why=EAGER_WHY)],
        "ScaleMatvecDiag": [recipe(lambda d: P.tfp_bijector(tfp_diag,
                                                            lambda d: {"log_diag": (d,)}, d))],
        "RationalQuadraticSpline": [
            recipe(lambda d: P.tfp_bijector(tfp_rqs, lambda d: {"w": (d, 4), "h": (d, 4),
                                                                "s": (d, 3)}, d, scale=0.5,
                                            points=1.5, eager=True), why=EAGER_WHY),
            recipe(lambda d: P.tfp_bijector(tfp_rqs, lambda d: {"w": (d, 4), "h": (d, 4),
                                                                "s": (d, 3)}, d, scale=0.5,
                                            z=P.bound_points(B), eager=True), AT_BOUND,
                   why=EAGER_WHY)],
        "MaskedAutoregressiveFlow": [recipe(lambda d: P.tfp_bijector(
            tfp_maf, lambda d: {"w": (d, d), "b": (d,), "a": (d,)}, d, scale=0.5))],
        "RealNVP": [recipe(lambda d: P.tfp_bijector(
            tfp_real_nvp, lambda d: {"w": (d // 2, d), "b": (d,)}, d, scale=0.5))],
    },
}

for _library, _classes in _conditional().items():
    for _cls, _entries in _classes.items():
        RECIPES[_library].setdefault(_cls, []).extend(_entries)
del _library, _classes, _cls, _entries
