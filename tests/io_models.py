"""Small saveable models for the model-file tests: every builder (unconditional and, where it
exists, conditional), both base distributions, a fitted and an unfitted ``FlowDensity``.

``MODELS[name](seed) -> (model, x, context)``: a model with non-default parameters, points in its
data space and a context for them (None for an unconditional model; the points for a
``FlowDensity`` are in its feature space).
"""

import numpy as np

from refflow import DiagNormal, Flow, StandardNormal
from refflow.distributions import DiagGaussianMixture, DiagStudentTMixture, StudentT, Uniform
from refflow.estimator import FlowDensity
from refflow.flows import BUILDERS

DIM = 3
CONTEXT_DIM = 2

#: Small options per builder (each must build a dim-3 flow quickly).
BUILDER_OPTIONS = {
    "realnvp": dict(n_layers=2, hidden=(6,)),
    "maf": dict(n_layers=2, hidden=(6, 6), batch_norm=True),
    "nsf": dict(n_layers=2, hidden=(6,), n_bins=4),
    "nsf-coupling": dict(n_layers=2, hidden=(6,), n_bins=4),
    "glow": dict(n_layers=2, hidden=(6,)),
    "planar": dict(n_layers=2),
    "radial": dict(n_layers=2),
    "sylvester": dict(n_layers=2, m=2),
    "bnaf": dict(n_layers=1, hidden_factors=(2,)),
    "gf": dict(n_layers=2, n_components=3),
    "naf": dict(n_layers=2, hidden=(6,), signal=3, network=(4,)),
    "unaf": dict(n_layers=2, hidden=(6,), signal=3, network=(4,), n_nodes=4),
    "sospf": dict(n_layers=2, hidden=(6,), degree=2, n_polynomials=2),
    "bpf": dict(n_layers=2, hidden=(6,), degree=6),
}
#: Builders that take a context (the planar family refuses one).
CONDITIONAL = ("realnvp", "maf", "nsf", "nsf-coupling", "glow", "gf", "naf", "unaf", "sospf",
               "bpf")


def _perturbed(model, seed):
    """Every parameter moved off its initial value (small, so that the maps stay tame)."""
    gen = np.random.default_rng(seed)
    for key, value in model.params.items():
        model.params[key] = value + 0.05 * gen.standard_normal(value.shape)
    return model


def _builder(name, context_dim):
    def make(seed):
        flow = BUILDERS[name](DIM, context_dim=context_dim, rng=seed, **BUILDER_OPTIONS[name])
        gen = np.random.default_rng(seed + 1)
        x = 0.5 * gen.standard_normal((5, DIM))
        context = None if context_dim is None else gen.standard_normal((5, context_dim))
        return _perturbed(flow, seed).eval(), x, context
    return make


def _bases(base):
    def make(seed):
        gen = np.random.default_rng(seed + 1)
        return _perturbed(base(DIM), seed), gen.standard_normal((4, DIM)), None
    return make


def _density(fitted):
    def make(seed):
        gen = np.random.default_rng(seed + 1)
        estimator = FlowDensity("maf", n_layers=1, hidden=(4,), epochs=1, batch_size=32,
                                random_state=seed)
        x = gen.standard_normal((40, 2))
        if fitted:
            estimator.fit(x)
        return estimator, x[:5], None
    return make


MODELS = {
    **{f"builder-{name}": _builder(name, None) for name in BUILDER_OPTIONS},
    **{f"builder-{name}-conditional": _builder(name, CONTEXT_DIM) for name in CONDITIONAL},
    "flow-diag-normal": lambda seed: (
        _perturbed(Flow(DiagNormal(DIM), BUILDERS["maf"](DIM, n_layers=1, hidden=(4,),
                                                           rng=seed).bijector), seed),
        np.random.default_rng(seed).standard_normal((4, DIM)), None),
    "standard-normal": _bases(StandardNormal),
    "diag-normal": _bases(DiagNormal),
    "student-t": _bases(lambda d: StudentT(d, df=4.0)),
    "student-t-fixed-df": _bases(lambda d: StudentT(d, df=4.0, trainable_df=False)),
    "diag-gaussian-mixture": _bases(lambda d: DiagGaussianMixture(d, n_components=3, rng=0)),
    "diag-student-t-mixture": _bases(lambda d: DiagStudentTMixture(d, n_components=3, rng=0)),
    "flow-uniform": lambda seed: (
        Flow(Uniform(-2.0, 3.0, dim=DIM), BUILDERS["maf"](DIM, n_layers=1, hidden=(4,),
                                                          rng=seed).bijector),
        np.random.default_rng(seed).uniform(-1.0, 1.0, (4, DIM)), None),
    "flow-density-fitted": _density(True),
    "flow-density-unfitted": _density(False),
}


def score(model, x, context):
    """What a loaded model must reproduce bit for bit: log-densities (an unfitted estimator
    has none: its spec and parameters are all there is)."""
    if isinstance(model, FlowDensity):
        if not hasattr(model, "flow_"):
            return np.zeros(0)
        return model.score_samples(x)
    if context is None:
        return model.log_prob(x)
    return model.log_prob(x, context=context)
