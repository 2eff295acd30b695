"""Density evaluation and sampling of the MAF: refflow vs zuko vs nflows, in the same run.

The model is the ``maf_train`` MAF of ``bench_train`` (dim 64, 5 MADE layers with alternating
orders, hidden (256, 256), the same three implementations, seed 0).

- ``maf_log_prob``: one ``log_prob`` of a fixed batch of 4096 N(0, 1) rows (seed 0). refflow
  ``flow.log_prob(x)``; zuko ``flow().log_prob(x)``, nflows ``flow.log_prob(x)``, both under
  ``torch.no_grad()``. Throughput in samples/s.
- ``maf_sample``: 10,000 samples (``--quick``: 1,000). refflow ``flow.sample(10000, rng=0)``
  (float64; in float32, where ``Flow.sample`` draws float64 only, the bijector's
  ``forward`` of float32 N(0, 1) noise, which is the same sampling pass); zuko
  ``flow().sample((10000,))``; nflows ``flow.sample(10000)`` (in float64, where nflows'
  ``StandardNormal`` draws in torch's default dtype, its own two steps ``noise = randn(n, 64,
  dtype)``, ``flow._transform.inverse(noise)``: what ``Flow.sample`` runs). All under no_grad.
  Sampling a MAF is sequential: ``dim`` MADE passes per layer unless an implementation
  evaluates hidden units incrementally.
- ``maf_sample_log_prob``: one ``log_prob`` of the rows just sampled, by the same
  implementation, so that ``sampling time / log_prob time`` compares the same rows. It is timed
  in the ``maf_sample`` process, after the sampling (the rows come from its last call), and is
  not a workload of its own in ``--only``.

Ratios ``peer time / refflow time`` above 1 mean refflow is faster.
"""

import inspect

import numpy as np

from bench_train import peer_model, refflow_model
from common import Case, n_params, n_torch_params, torch_copy, torch_dtype, torch_or_skip

WORKLOADS = {
    "maf_log_prob": "MAF log_prob (batch 4096)",
    "maf_sample": "MAF sampling (10,000 samples)",
}
# timed in the process of the workload named: {derived: (parent, label)}
FOLLOWUPS = {"maf_sample_log_prob": ("maf_sample",
                                     "MAF log_prob of the sampled rows (same rows as sampling)")}
UNIT = "samples/s"


def _refflow_sampler(flow, dtype):
    """``n -> samples``: ``Flow.sample`` in float64; in float32 (unless ``Flow.sample`` grew a
    ``dtype`` option) the bijector's forward pass of float32 base noise."""
    if dtype == "float64":
        return lambda n: flow.sample(n, rng=0)
    if "dtype" in inspect.signature(flow.sample).parameters:
        return lambda n: flow.sample(n, rng=0, dtype=np.float32)

    def sample(n):
        z = np.random.default_rng(0).standard_normal((n, flow.dim)).astype(np.float32)
        return flow.bijector.forward(z)[0]

    return sample


def _peer_sampler(peer, model, dtype):
    torch, _ = torch_or_skip(peer)
    tdtype = torch_dtype(dtype)
    if peer == "zuko":
        return lambda n: model().sample((n,))

    def sample(n):  # nflows' Flow._sample, with the noise drawn in the model's dtype
        noise = torch.randn(n, model._distribution._shape[0], dtype=tdtype)
        return model._transform.inverse(noise)[0]

    return sample


def build(workload, impl, sizes, dtype):
    """The :class:`Case` of ``workload`` for ``impl`` in ``dtype``.

    ``maf_sample`` carries a ``followup``: ``maf_sample_log_prob``, one ``log_prob`` of the rows
    of its last timed call.
    """
    if impl == "refflow":
        flow = refflow_model("maf", sizes)
        info = {"params": n_params(flow)}
        log_prob, sampler, wrap = flow.log_prob, _refflow_sampler(flow, dtype), (lambda a: a)
    else:
        torch, _ = torch_or_skip(impl)
        model, peer_log_prob = peer_model(impl, "maf", sizes, dtype)
        info = {"params": n_torch_params(model)}
        raw_sampler = _peer_sampler(impl, model, dtype)

        def log_prob(a):
            with torch.no_grad():
                return peer_log_prob(a)

        def sampler(n):
            with torch.no_grad():
                return raw_sampler(n)

        wrap = torch_copy
    if workload == "maf_log_prob":
        x = np.random.default_rng(0).standard_normal((sizes.log_prob_batch, sizes.dim))
        xt = wrap(x.astype(dtype))
        return Case(lambda: log_prob(xt), x.shape[0], info=info)
    if workload == "maf_sample":
        last = []

        def run():
            last[:] = [sampler(sizes.sample_rows)]

        def followup():
            rows = last[0]
            return {"maf_sample_log_prob": Case(lambda: log_prob(rows), sizes.sample_rows,
                                                info=info)}

        return Case(run, sizes.sample_rows, info=info, followup=followup)
    raise KeyError(workload)
