"""The survey: the oracle over the peers' transforms, with the verdict each should get.

``SURVEY`` lists one entry per transform: library, class, a builder from ``peer_layers``, the
expected verdict and, for anything but ``pass``, the reason. ``run(case)`` runs
``check_layer`` on it; ``python -m tests.oracle_survey`` prints the table (transform, checks,
worst error, verdict).
"""

from dataclasses import dataclass, field

from refflow.testing import check_layer

from . import peer_layers as P

#: max_elements per parameter array: a seeded sample keeps a layer's gradient check to a few
#: hundred calls; the analytic norm still covers every element.
SAMPLE = 6
#: Elements per gradient re-examined by a step sweep: enough to confirm a failure or show one
#: step-dependent estimate (each sweep is ~60 calls).
SWEEPS = 3


@dataclass
class Case:
    library: str
    cls: str
    build: object
    expect: str = "pass"
    reason: str = ""
    heavy: bool = False
    options: dict = field(default_factory=dict)

    @property
    def id(self):
        return f"{self.library}-{self.cls}"


def _zuko(cls, **kw):
    return P.zuko_flow(cls, transforms=1, hidden_features=[8], **kw)


# zuko's numerical inverses: bisection on [-B, B] with ceil(log2(2B / 1e-6)) halvings, so the
# inverse is resolved to ~6e-7 (B = 10) and round trips hold to that, not to 1e-10; the
# finite differences of the inverse see a staircase of that step.
BISECTION = dict(rtol_round_trip=2e-6, rtol_log_det_sum=1e-5)
BISECTION_WHY = ("bisection inverse resolved to ~6e-7 (zuko's eps = 1e-6): finite differences of "
                 "the inverse cannot reach 1e-6")


def survey():
    return [
        # ------------------------------------------------------------------ zuko
        Case("zuko", "MAF", _zuko("MAF")),
        Case("zuko", "NSF", _zuko("NSF", bins=4)),
        Case("zuko", "RealNVP", _zuko("RealNVP")),
        Case("zuko", "NICE", _zuko("NICE")),
        Case("zuko", "NAF", P.zuko_flow("NAF", transforms=1, signal=4, hidden_features=[8],
                                         network={"hidden_features": [8]}),
             "fail", "defect 1: the inverse's gradients count the chain term twice",
             options=BISECTION, heavy=True),
        Case("zuko", "UNAF", P.zuko_flow("UNAF", transforms=1, signal=4, hidden_features=[8],
                                          network={"hidden_features": [8]}),
             "fail", "defect 1: the inverse's gradients count the chain term twice",
             options=dict(BISECTION, rtol_log_det=1e-5), heavy=True),
        # (UNAF's map is a 32-node Gauss-Legendre quadrature of its integrand, its log-det the
        # integrand's exact log: they agree to the quadrature's ~1e-6, by design)
        Case("zuko", "SOSPF", P.zuko_flow("SOSPF", transforms=1, hidden_features=[8]),
             "not-converged", BISECTION_WHY, options=BISECTION, heavy=True),
        Case("zuko", "BPF", P.zuko_flow("BPF", transforms=1, hidden_features=[8]),
             "not-converged", BISECTION_WHY, options=BISECTION, heavy=True),
        Case("zuko", "GF", P.zuko_flow("GF", transforms=1, hidden_features=[8]),
             "not-converged", BISECTION_WHY, options=BISECTION),
        Case("zuko", "MonotonicRQSTransform", P.zuko_module(P.ZUKO_RQS, 3, scale=1.0),
             options=dict(sum_log_det=True)),
        Case("zuko", "BoundedBernsteinTransform", P.zuko_module(P.ZUKO_BERNSTEIN, 2, scale=1.0),
             "not-converged", BISECTION_WHY, options=dict(sum_log_det=True, **BISECTION)),
        Case("zuko", "MonotonicAffineTransform", P.zuko_module(P.ZUKO_AFFINE, 3, scale=1.0),
             options=dict(sum_log_det=True)),
        Case("zuko", "LULinearTransform", P.zuko_module(P.ZUKO_LU, 3)),
        Case("zuko", "RotationTransform", P.zuko_module(P.ZUKO_ROTATION, 3)),
        Case("zuko", "BoundedBernsteinTransform(x = -B + 2B eps)",
             P.zuko_module(P.ZUKO_BERNSTEIN, 2, scale=1.0, z=P.zuko_bernstein_at_switch),
             "fail", "defect 8: the map jumps by 1e-5 where the polynomial hands over to the "
             "linear extrapolation", options=dict(sum_log_det=True, **BISECTION)),
        Case("zuko", "GaussianizationTransform", P.zuko_module(P.ZUKO_GAUSSIANIZATION, 2),
             "not-converged", BISECTION_WHY, options=dict(sum_log_det=True, **BISECTION)),
        Case("zuko", "SignedPowerTransform", P.zuko_module(P.ZUKO_SIGNED_POWER, 3),
             options=dict(sum_log_det=True)),
        # ---------------------------------------------------------------- nflows
        Case("nflows", "MaskedAffineAutoregressiveTransform", P.nflows_transform(_nf_maf)),
        Case("nflows", "MaskedPiecewiseRationalQuadraticAutoregressiveTransform",
             P.nflows_transform(_nf_mrqs, scale=0.5, points=1.5)),
        Case("nflows", "MaskedPiecewiseQuadraticAutoregressiveTransform",
             P.nflows_transform(_nf_mquad, scale=0.5, points=1.5)),
        Case("nflows", "AffineCouplingTransform", P.nflows_transform(_nf_affine_coupling)),
        Case("nflows", "PiecewiseRationalQuadraticCouplingTransform",
             P.nflows_transform(_nf_rqs_coupling, scale=0.5, points=1.5)),
        Case("nflows", "PiecewiseCubicCouplingTransform",
             P.nflows_transform(_nf_cubic_coupling, scale=0.5, points=1.5)),
        Case("nflows", "LULinear", P.nflows_transform(_nf_lu)),
        Case("nflows", "SVDLinear", P.nflows_transform(_nf_svd)),
        Case("nflows", "BatchNorm", P.nflows_transform(P.nflows_batchnorm, eval_mode=True)),
        Case("nflows", "ActNorm", P.nflows_transform(_nf_actnorm)),
        # ------------------------------------------------------------- normflows
        Case("normflows", "Planar", P.normflows_flow(_nfl_planar, forward_only=True)),
        Case("normflows", "Planar(leaky_relu)", P.normflows_flow(_nfl_planar_leaky),
             "fail", "defect 3: the log-det is computed in float32 in a float64 module"),
        Case("normflows", "Planar(w.u = 800)",
             P.normflows_flow(_nfl_planar, forward_only=True, post=P.normflows_planar_overflow),
             "fail", "defect 4: log(1 + exp(w.u)) overflows for w.u > 709"),
        Case("normflows", "unconstrained_rational_quadratic_spline(tails=list)",
             P.normflows_spline_list_tails(), "fail",
             "defect 2: with a list of tails, points outside the bound map to 0"),
        Case("normflows", "Radial", P.normflows_flow(_nfl_radial, forward_only=True)),
        Case("normflows", "MaskedAffineAutoregressive", P.normflows_flow(_nfl_maf, scale=0.3)),
        Case("normflows", "AffineCouplingBlock", P.normflows_flow(_nfl_affine_block, dim=4)),
        Case("normflows", "CoupledRationalQuadraticSpline",
             P.normflows_flow(_nfl_crqs, scale=0.4, points=1.5)),
        Case("normflows", "AutoregressiveRationalQuadraticSpline",
             P.normflows_flow(_nfl_arqs, scale=0.4, points=1.5)),
        Case("normflows", "LULinearPermute", P.normflows_flow(_nfl_lu)),
        # ------------------------------------------------------------------ Pyro
        Case("pyro", "AffineAutoregressive", P.pyro_transform(_py_aar),
             "fail", "defect 5: the inverse builds float32 zeros in a float64 module and raises"),
        Case("pyro", "AffineAutoregressive(stable)", P.pyro_transform(_py_aar_stable),
             "fail", "defect 5: the inverse builds float32 zeros in a float64 module and raises"),
        Case("pyro", "AffineCoupling", P.pyro_transform(_py_affine_coupling)),
        Case("pyro", "Spline", P.pyro_transform(_py_spline_linear, scale=0.5, points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "Spline(quadratic)", P.pyro_transform(_py_spline_quadratic, scale=0.5,
                                                            points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "Spline(quadratic, x = +-B)",
             P.pyro_transform(_py_spline_quadratic, scale=0.5, z=P.pyro_spline_at_bound),
             "fail", "defect 7: slope 0.999 inside the bound, 1 outside (smooth=True: a kink "
             "is a failure)", options=dict(sum_log_det=True, smooth=True)),
        Case("pyro", "SplineAutoregressive", P.pyro_transform(_py_spline_ar, scale=0.5, points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "SplineCoupling", P.pyro_transform(_py_spline_coupling, scale=0.5, points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "Planar", P.pyro_transform(_py_planar, forward_only=True)),
        Case("pyro", "Radial", P.pyro_transform(_py_radial, forward_only=True)),
        Case("pyro", "Sylvester", P.pyro_transform(_py_sylvester, forward_only=True),
             "fail", "defect 6: the log-det ignores Q (right only when Q commutes with diag(h'))"),
        Case("pyro", "BlockAutoregressive", P.pyro_transform(_py_bnaf, forward_only=True)),
        Case("pyro", "Polynomial", P.pyro_transform(_py_polynomial, forward_only=True),
             options=dict(rtol_log_det=1e-5)),   # log(f' + 1e-8) by design: a bias 1e-8 / f'
        # (here ~1e-6 relative); the gradients are exact
        Case("pyro", "NeuralAutoregressive", P.pyro_transform(_py_naf, forward_only=True)),
        Case("pyro", "Householder", P.pyro_transform(_py_householder)),
        Case("pyro", "BatchNorm", P.pyro_transform(P.pyro_batchnorm, post=P.pyro_batchnorm_gamma),
             options=dict(sum_log_det=True)),
        Case("pyro", "MatrixExponential", P.pyro_transform(_py_matrix_exp),
             options=dict(rtol_round_trip=1e-8)),   # exp(W) as a Taylor series of 8 terms:
        # forward and inverse are inverse only to ~|W|^9 / 9!, by design (iterations=8)
        Case("pyro", "ELUTransform", P.plain_transform(_py_elu), "fail",
             "found here, not among the eight: the inverse computes log1p(y + 1e-8), so round "
             "trips and fwd + inv log-dets are off by ~1e-8 (a deliberate epsilon)",
             options=dict(sum_log_det=True)),
        # --------------------------------------------------------------- FlowJAX
        Case("flowjax", "Affine", P.flowjax_bijection(_fj_affine)),
        Case("flowjax", "RationalQuadraticSpline", P.flowjax_bijection(_fj_rqs, scale=0.5,
                                                                        points=1.0)),
        Case("flowjax", "MaskedAutoregressive", P.flowjax_bijection(_fj_maf, scale=0.3)),
        Case("flowjax", "Coupling", P.flowjax_bijection(_fj_coupling, scale=0.3, points=1.0)),
        Case("flowjax", "BlockAutoregressiveNetwork", P.flowjax_bijection(_fj_bnaf, scale=0.3,
                                                                           forward_only=True)),
        Case("flowjax", "Planar", P.flowjax_bijection(_fj_planar, forward_only=True)),
        Case("flowjax", "TriangularAffine", P.flowjax_bijection(_fj_triangular)),
        Case("flowjax", "LeakyTanh", P.flowjax_bijection(_fj_leaky_tanh)),
        Case("flowjax", "Householder", P.flowjax_bijection(_fj_householder)),
        # --------------------------------------------------------------- distrax
        Case("distrax", "RationalQuadraticSpline", P.distrax_bijector(
            _dx_rqs, lambda d: {"p": (d, 3 * 4 + 1)}, scale=0.5), options=dict(sum_log_det=True)),
        Case("distrax", "ScalarAffine", P.distrax_bijector(
            _dx_scalar_affine, lambda d: {"shift": (d,), "log_scale": (d,)}),
             options=dict(sum_log_det=True)),
        Case("distrax", "LowerUpperTriangularAffine", P.distrax_bijector(
            _dx_lu_affine, lambda d: {"matrix": (d, d), "bias": (d,)})),
        Case("distrax", "UnconstrainedAffine", P.distrax_bijector(
            _dx_unconstrained_affine, lambda d: {"matrix": (d, d), "bias": (d,)})),
        Case("distrax", "MaskedCoupling", P.distrax_bijector(
            _dx_masked_coupling, lambda d: {"w": (d, 2 * d), "b": (2 * d,)})),
    ]


# ------------------------------------------------------------------------- nflows builders
def _nf_maf(d):
    from nflows.transforms import MaskedAffineAutoregressiveTransform
    return MaskedAffineAutoregressiveTransform(d, 8, num_blocks=1, use_residual_blocks=False)


def _nf_mrqs(d):
    from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as T
    return T(d, 8, num_bins=4, tails="linear", tail_bound=3.0, num_blocks=1,
             use_residual_blocks=False)


def _nf_mquad(d):
    from nflows.transforms import MaskedPiecewiseQuadraticAutoregressiveTransform as T
    return T(d, 8, num_bins=4, tails="linear", tail_bound=3.0, num_blocks=1,
             use_residual_blocks=False)


def _nf_mask(d):
    import torch
    return torch.arange(d) % 2


def _nf_affine_coupling(d):
    from nflows.transforms import AffineCouplingTransform
    return AffineCouplingTransform(_nf_mask(d), P._nflows_net)


def _nf_rqs_coupling(d):
    from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform as T
    return T(_nf_mask(d), P._nflows_net, num_bins=4, tails="linear", tail_bound=3.0)


def _nf_cubic_coupling(d):
    from nflows.transforms import PiecewiseCubicCouplingTransform as T
    return T(_nf_mask(d), P._nflows_net, num_bins=4, tails="linear", tail_bound=3.0)


def _nf_lu(d):
    from nflows.transforms import LULinear
    return LULinear(d, identity_init=False)


def _nf_svd(d):
    from nflows.transforms import SVDLinear
    return SVDLinear(d, num_householder=2, identity_init=False)


def _nf_actnorm(d):
    import torch
    from nflows.transforms import ActNorm
    layer = ActNorm(d)
    layer.initialized = torch.tensor(True)     # no data-dependent initialisation in the check
    return layer


# ---------------------------------------------------------------------- normflows builders
def _nfl_planar(d):
    import normflows as nf
    return nf.flows.Planar((d,), act="tanh")


def _nfl_planar_leaky(d):
    import normflows as nf
    return nf.flows.Planar((d,), act="leaky_relu")


def _nfl_radial(d):
    import normflows as nf
    return nf.flows.Radial((d,))


def _nfl_maf(d):
    import normflows as nf
    return nf.flows.MaskedAffineAutoregressive(d, 8, num_blocks=1)


def _nfl_affine_block(d):
    import normflows as nf
    return nf.flows.AffineCouplingBlock(nf.nets.MLP([d // 2, 8, 2 * (d - d // 2)]))


def _nfl_crqs(d):
    import normflows as nf
    return nf.flows.CoupledRationalQuadraticSpline(d, 1, 8, num_bins=4, tail_bound=3.0)


def _nfl_arqs(d):
    import normflows as nf
    return nf.flows.AutoregressiveRationalQuadraticSpline(d, 1, 8, num_bins=4, tail_bound=3.0)


def _nfl_lu(d):
    import normflows as nf
    return nf.flows.LULinearPermute(d, identity_init=False)


# --------------------------------------------------------------------------- Pyro builders
def _py_aar(d):
    from pyro.distributions.transforms import AffineAutoregressive
    return AffineAutoregressive(P._arn(d))


def _py_aar_stable(d):
    from pyro.distributions.transforms import AffineAutoregressive
    return AffineAutoregressive(P._arn(d), stable=True)


def _py_affine_coupling(d):
    from pyro.distributions.transforms import AffineCoupling
    from pyro.nn import DenseNN
    return AffineCoupling(1, DenseNN(1, [8], [d - 1, d - 1]))


def _py_spline_linear(d):
    from pyro.distributions.transforms import Spline
    return Spline(d, count_bins=4, bound=3.0, order="linear")


def _py_spline_quadratic(d):
    from pyro.distributions.transforms import Spline
    return Spline(d, count_bins=4, bound=3.0, order="quadratic")


def _py_spline_ar(d):
    from pyro.distributions.transforms import SplineAutoregressive
    return SplineAutoregressive(d, P._arn(d, [4, 4, 3, 4]), count_bins=4, bound=3.0)


def _py_spline_coupling(d):
    from pyro.distributions.transforms import SplineCoupling
    from pyro.nn import DenseNN
    k, rest = 4, d - 1
    return SplineCoupling(d, 1, DenseNN(1, [8], [rest * k, rest * k, rest * (k - 1), rest * k]),
                          count_bins=k, bound=3.0)


def _py_planar(d):
    from pyro.distributions.transforms import Planar
    return Planar(d)


def _py_radial(d):
    from pyro.distributions.transforms import Radial
    return Radial(d)


def _py_sylvester(d):
    from pyro.distributions.transforms import Sylvester
    return Sylvester(d, count_transforms=2)


def _py_bnaf(d):
    from pyro.distributions.transforms import BlockAutoregressive
    return BlockAutoregressive(d, hidden_factors=[2])


def _py_polynomial(d):
    from pyro.distributions.transforms import Polynomial
    return Polynomial(P._arn(d, [(2 + 1) * 2]), d, count_degree=2, count_sum=2)


def _py_naf(d):
    from pyro.distributions.transforms import NeuralAutoregressive
    return NeuralAutoregressive(P._arn(d, [8, 8, 8]), hidden_units=8)


def _py_householder(d):
    from pyro.distributions.transforms import Householder
    return Householder(d, count_transforms=2)


def _py_matrix_exp(d):
    from pyro.distributions.transforms import MatrixExponential
    return MatrixExponential(d)


def _py_elu():
    from pyro.distributions.transforms import ELUTransform
    return P.TorchTransform(ELUTransform())


# ------------------------------------------------------------------------ FlowJAX builders
def _fj_affine(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.Affine(jnp.zeros(d), jnp.ones(d))


def _fj_rqs(key, d):
    import equinox as eqx
    import flowjax.bijections as B
    spline = eqx.filter_vmap(lambda _: B.RationalQuadraticSpline(knots=4, interval=3.0),
                             axis_size=d)(None)
    return B.Vmap(spline, in_axes=eqx.if_array(0))


def _fj_maf(key, d):
    import flowjax.bijections as B
    return B.MaskedAutoregressive(key, transformer=B.Affine(), dim=d, nn_width=8, nn_depth=1)


def _fj_coupling(key, d):
    import flowjax.bijections as B
    return B.Coupling(key, transformer=B.RationalQuadraticSpline(knots=4, interval=3.0),
                      untransformed_dim=1, dim=d, nn_width=8, nn_depth=1)


def _fj_bnaf(key, d):
    import flowjax.bijections as B
    return B.BlockAutoregressiveNetwork(key, dim=d, depth=1, block_dim=2)


def _fj_planar(key, d):
    import flowjax.bijections as B
    return B.Planar(key, dim=d)


def _fj_triangular(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.TriangularAffine(jnp.zeros(d), jnp.eye(d))


def _fj_leaky_tanh(key, d):
    import flowjax.bijections as B
    return B.LeakyTanh(3.0, shape=(d,))


def _fj_householder(key, d):
    import flowjax.bijections as B
    import jax.numpy as jnp
    return B.Householder(jnp.ones(d))


# ------------------------------------------------------------------------ distrax builders
def _dx_rqs(p, d):
    import distrax
    return distrax.RationalQuadraticSpline(p["p"], range_min=-3.0, range_max=3.0)


def _dx_scalar_affine(p, d):
    import distrax
    return distrax.ScalarAffine(shift=p["shift"], log_scale=p["log_scale"])


def _dx_lu_affine(p, d):
    import distrax
    return distrax.LowerUpperTriangularAffine(p["matrix"], p["bias"])


def _dx_unconstrained_affine(p, d):
    import distrax
    import jax.numpy as jnp
    return distrax.UnconstrainedAffine(jnp.eye(d) + p["matrix"], p["bias"])


def _dx_masked_coupling(p, d):
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


def run(case, seed=0):
    kwargs = case.build(seed)
    options = dict(case.options)
    options.update({k: kwargs.pop(k) for k in list(kwargs) if k not in (
        "forward", "inverse", "z", "forward_vjp", "inverse_vjp", "params", "functional")})
    return check_layer(case.library, case.cls, kwargs.pop("forward"), kwargs.pop("inverse"),
                       kwargs.pop("z"), max_elements=SAMPLE, max_sweeps=SWEEPS, rng=seed,
                       reproducer=f"tests/oracle_survey.py::{case.id} (seed {seed})",
                       **kwargs, **options)


def summary(report):
    """``(checks, worst error, verdict, what did not pass)`` of a layer report, for the table.

    ``checks`` counts the checks that ran (skipped ones left out) plus contract problems."""
    ran = [line for r in report.reports.values() for line in r.lines if line.verdict != "skipped"]
    problems = [p for r in report.reports.values() for p in r.problems]
    flagged = [f"{part}: {line.label} ({line.verdict})" for verdict in ("fail", "not-converged")
               for part, r in report.reports.items() for line in r.lines
               if line.verdict == verdict]
    flagged[:0] = [f"{part}: {p}" for part, r in report.reports.items() for p in r.problems]
    return len(ran) + len(problems), report.worst_error(), report.verdict, flagged


if __name__ == "__main__":
    import sys
    import time

    import torch

    torch.set_num_threads(1)        # tiny tensors: a second thread only adds spin-waits
    wanted = [a for a in sys.argv[1:] if not a.startswith("-")]
    markdown = "--markdown" in sys.argv
    if markdown:
        print("| transform | checks | worst error | verdict | expected | not passed |")
        print("| --- | ---: | ---: | --- | --- | --- |")
    else:
        print(f"{'transform':<38}{'checks':>7}{'worst error':>13}  {'verdict':<14}{'s':>6}  expected")
    for case in survey():
        if wanted and not any(w.lower() in case.id.lower() for w in wanted):
            continue
        t0 = time.perf_counter()
        report = run(case)
        n, worst, verdict, flagged = summary(report)
        if markdown:
            shown = "; ".join(flagged[:3]) + (f"; +{len(flagged) - 3} more" if len(flagged) > 3 else "")
            print(f"| {case.library} {case.cls} | {n} | {worst:.1e} | {verdict} | {case.expect} | "
                  f"{shown} |", flush=True)
            continue
        print(f"{case.id:<38}{n:>7}{worst:>13.2e}  {verdict:<14}{time.perf_counter() - t0:>6.1f}"
              f"  {case.expect}", flush=True)
        if verdict != "pass" or "-v" in sys.argv:
            print("\n".join("    " + t for t in str(report).splitlines()), flush=True)
