"""The survey: the oracle over the peers' transforms, with the verdict each should get.

``SURVEY`` lists one entry per transform: library, class, a builder (from
``refflow.audit.peers`` and the constructors of ``refflow.audit.recipes``, shared with
``python -m refflow audit``), the expected verdict and, for anything but ``pass``, the reason.
``run(case)`` runs ``check_layer`` on it; ``python -m tests.oracle_survey`` prints the table (transform, checks,
worst error, verdict).
"""

from dataclasses import dataclass, field

from refflow.testing import check_layer

from refflow.audit import peers as P
from refflow.audit import recipes as R

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
        Case("nflows", "MaskedAffineAutoregressiveTransform", P.nflows_transform(R.nf_maf)),
        Case("nflows", "MaskedPiecewiseRationalQuadraticAutoregressiveTransform",
             P.nflows_transform(R.nf_mrqs, scale=0.5, points=1.5)),
        Case("nflows", "MaskedPiecewiseQuadraticAutoregressiveTransform",
             P.nflows_transform(R.nf_mquad, scale=0.5, points=1.5)),
        Case("nflows", "AffineCouplingTransform", P.nflows_transform(R.nf_affine_coupling)),
        Case("nflows", "PiecewiseRationalQuadraticCouplingTransform",
             P.nflows_transform(R.nf_rqs_coupling, scale=0.5, points=1.5)),
        Case("nflows", "PiecewiseCubicCouplingTransform",
             P.nflows_transform(R.nf_cubic_coupling, scale=0.5, points=1.5)),
        Case("nflows", "LULinear", P.nflows_transform(R.nf_lu)),
        Case("nflows", "SVDLinear", P.nflows_transform(R.nf_svd)),
        Case("nflows", "BatchNorm", P.nflows_transform(P.nflows_batchnorm, eval_mode=True)),
        Case("nflows", "ActNorm", P.nflows_transform(R.nf_actnorm)),
        # ------------------------------------------------------------- normflows
        Case("normflows", "Planar", P.normflows_flow(R.nfl_planar, forward_only=True)),
        Case("normflows", "Planar(leaky_relu)", P.normflows_flow(R.nfl_planar_leaky),
             "fail", "defect 3: the log-det is computed in float32 in a float64 module"),
        Case("normflows", "Planar(w.u = 800)",
             P.normflows_flow(R.nfl_planar, forward_only=True, post=P.normflows_planar_overflow),
             "fail", "defect 4: log(1 + exp(w.u)) overflows for w.u > 709"),
        Case("normflows", "unconstrained_rational_quadratic_spline(tails=list)",
             P.normflows_spline_list_tails(), "fail",
             "defect 2: with a list of tails, points outside the bound map to 0"),
        Case("normflows", "Radial", P.normflows_flow(R.nfl_radial, forward_only=True)),
        Case("normflows", "MaskedAffineAutoregressive", P.normflows_flow(R.nfl_maf, scale=0.3)),
        Case("normflows", "AffineCouplingBlock", P.normflows_flow(R.nfl_affine_block, dim=4)),
        Case("normflows", "CoupledRationalQuadraticSpline",
             P.normflows_flow(R.nfl_crqs, scale=0.4, points=1.5)),
        Case("normflows", "AutoregressiveRationalQuadraticSpline",
             P.normflows_flow(R.nfl_arqs, scale=0.4, points=1.5)),
        Case("normflows", "LULinearPermute", P.normflows_flow(R.nfl_lu)),
        # ------------------------------------------------------------------ Pyro
        Case("pyro", "AffineAutoregressive", P.pyro_transform(R.py_aar),
             "fail", "defect 5: the inverse builds float32 zeros in a float64 module and raises"),
        Case("pyro", "AffineAutoregressive(stable)", P.pyro_transform(R.py_aar_stable),
             "fail", "defect 5: the inverse builds float32 zeros in a float64 module and raises"),
        Case("pyro", "AffineCoupling", P.pyro_transform(R.py_affine_coupling)),
        Case("pyro", "Spline", P.pyro_transform(R.py_spline_linear, scale=0.5, points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "Spline(quadratic)", P.pyro_transform(R.py_spline_quadratic, scale=0.5,
                                                            points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "Spline(quadratic, x = +-B)",
             P.pyro_transform(R.py_spline_quadratic, scale=0.5, z=P.pyro_spline_at_bound),
             "fail", "defect 7: slope 0.999 inside the bound, 1 outside (smooth=True: a kink "
             "is a failure)", options=dict(sum_log_det=True, smooth=True)),
        Case("pyro", "SplineAutoregressive", P.pyro_transform(R.py_spline_ar, scale=0.5, points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "SplineCoupling", P.pyro_transform(R.py_spline_coupling, scale=0.5, points=1.5),
             options=dict(sum_log_det=True)),
        Case("pyro", "Planar", P.pyro_transform(R.py_planar, forward_only=True)),
        Case("pyro", "Radial", P.pyro_transform(R.py_radial, forward_only=True)),
        Case("pyro", "Sylvester", P.pyro_transform(R.py_sylvester, forward_only=True),
             "fail", "defect 6: the log-det ignores Q (right only when Q commutes with diag(h'))"),
        Case("pyro", "BlockAutoregressive", P.pyro_transform(R.py_bnaf, forward_only=True)),
        Case("pyro", "Polynomial", P.pyro_transform(R.py_polynomial, forward_only=True),
             options=dict(rtol_log_det=1e-5)),   # log(f' + 1e-8) by design: a bias 1e-8 / f'
        # (here ~1e-6 relative); the gradients are exact
        Case("pyro", "NeuralAutoregressive", P.pyro_transform(R.py_naf, forward_only=True)),
        Case("pyro", "Householder", P.pyro_transform(R.py_householder)),
        Case("pyro", "BatchNorm", P.pyro_transform(P.pyro_batchnorm, post=P.pyro_batchnorm_gamma),
             options=dict(sum_log_det=True)),
        Case("pyro", "MatrixExponential", P.pyro_transform(R.py_matrix_exp),
             options=dict(rtol_round_trip=1e-8)),   # exp(W) as a Taylor series of 8 terms:
        # forward and inverse are inverse only to ~|W|^9 / 9!, by design (iterations=8)
        Case("pyro", "ELUTransform", P.plain_transform(R.py_elu), "fail",
             "found here, not among the eight: the inverse computes log1p(y + 1e-8), so round "
             "trips and fwd + inv log-dets are off by ~1e-8 (a deliberate epsilon)",
             options=dict(sum_log_det=True)),
        # --------------------------------------------------------------- FlowJAX
        Case("flowjax", "Affine", P.flowjax_bijection(R.fj_affine)),
        Case("flowjax", "RationalQuadraticSpline", P.flowjax_bijection(R.fj_rqs, scale=0.5,
                                                                        points=1.0)),
        Case("flowjax", "MaskedAutoregressive", P.flowjax_bijection(R.fj_maf, scale=0.3)),
        Case("flowjax", "Coupling", P.flowjax_bijection(R.fj_coupling, scale=0.3, points=1.0)),
        Case("flowjax", "BlockAutoregressiveNetwork", P.flowjax_bijection(R.fj_bnaf, scale=0.3,
                                                                           forward_only=True)),
        Case("flowjax", "Planar", P.flowjax_bijection(R.fj_planar, forward_only=True)),
        Case("flowjax", "TriangularAffine", P.flowjax_bijection(R.fj_triangular)),
        Case("flowjax", "LeakyTanh", P.flowjax_bijection(R.fj_leaky_tanh)),
        Case("flowjax", "Householder", P.flowjax_bijection(R.fj_householder)),
        # --------------------------------------------------------------- distrax
        Case("distrax", "RationalQuadraticSpline", P.distrax_bijector(
            R.dx_rqs, lambda d: {"p": (d, 3 * 4 + 1)}, scale=0.5), options=dict(sum_log_det=True)),
        Case("distrax", "ScalarAffine", P.distrax_bijector(
            R.dx_scalar_affine, lambda d: {"shift": (d,), "log_scale": (d,)}),
             options=dict(sum_log_det=True)),
        Case("distrax", "LowerUpperTriangularAffine", P.distrax_bijector(
            R.dx_lu_affine, lambda d: {"matrix": (d, d), "bias": (d,)})),
        Case("distrax", "UnconstrainedAffine", P.distrax_bijector(
            R.dx_unconstrained_affine, lambda d: {"matrix": (d, d), "bias": (d,)})),
        Case("distrax", "MaskedCoupling", P.distrax_bijector(
            R.dx_masked_coupling, lambda d: {"w": (d, 2 * d), "b": (2 * d,)})),
    ]


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
