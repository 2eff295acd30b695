"""Training steps: refflow vs zuko vs nflows on the same model sizes, in the same run.

One training step is, for refflow, ``nll, grads = flow.nll_and_grad(x); adam.step(grads)`` and,
for the peers (torch CPU), ``loss = -flow.log_prob(x).mean(); opt.zero_grad(); loss.backward();
opt.step()`` with ``torch.optim.Adam``. The data ``x`` are fixed N(0, 1) rows (seed 0), the same
array for every implementation; float32 means float32 data and a float32 model (refflow computes
in the data's dtype; its gradients and Adam state are float64 by contract).

Workloads (fixed, so later runs compare; the same model configuration for the three
implementations):

- ``maf_train``: MAF, dim 64, 5 MADE layers alternating natural and reversed orders, hidden
  (256, 256), ReLU, batch 512. refflow ``refflow.MAF(64, n_layers=5, hidden=(256, 256))``
  (MADEs with ``Reverse`` between them, the same layout as zuko's alternating orders); zuko
  ``MAF(features=64, transforms=5, hidden_features=[256, 256])``; nflows
  ``MaskedAutoregressiveFlow(64, 256, num_layers=5, ...)`` with reverse permutations and no
  batch norm. 576,640 parameters each (masked entries counted, as torch does).
- ``nsf_train``: autoregressive NSF, same sizes, K = 8 bins. refflow: 5
  ``MaskedSplineAutoregressive`` layers with alternating orders and nothing between them
  (``refflow.NSF`` adds ``LULinear`` layers, which zuko's NSF does not have), B = 3;
  zuko ``NSF(features=64, transforms=5, bins=8, hidden_features=[256, 256])`` (its bound is
  fixed at 5); nflows 5 x [``ReversePermutation``, ``MaskedPiecewiseRationalQuadratic
  AutoregressiveTransform(tail_bound=3.0)``]. 2,303,680 parameters each.
- ``realnvp_train``: affine coupling, dim 2, 8 layers, hidden (64, 64), batch 4096. refflow
  ``refflow.RealNVP(2, n_layers=8, hidden=(64, 64))``; zuko ``RealNVP(features=2,
  transforms=8, hidden_features=[64, 64])``; nflows 8 ``AffineCouplingTransform`` with
  alternating masks and ``MLP([1], [2], hidden_sizes=[64, 64])``. 35,344 parameters each.

The scale maps differ (refflow and zuko: soft-clipped log-scale; nflows: softplus for MAF,
sigmoid for coupling), as do the spline parameter maps; the dense work is the same. Read the
ratio ``peer time / refflow time``: above 1 means refflow is faster.

Every case runs in a process of its own (``run.py``); refflow is imported inside the refflow
functions only, so that a peer's process never loads it.
"""

import numpy as np

from common import (Case, Skip, n_params, n_torch_params, torch_copy, torch_dtype,
                    torch_or_skip, torch_seed)

WORKLOADS = {
    "maf_train": "MAF train step (dim 64, 5 layers, hidden (256, 256), batch 512)",
    "nsf_train": "NSF train step (AR, dim 64, 5 layers, hidden (256, 256), K 8, batch 512)",
    "realnvp_train": "RealNVP train step (dim 2, 8 layers, hidden (64, 64), batch 4096)",
}
UNIT = "samples/s"


def data(sizes, which, dtype):
    """The fixed training batch of ``which`` ("maf"/"nsf" or "realnvp"), seed 0."""
    if which == "realnvp":
        dim, batch = sizes.rnvp_dim, sizes.rnvp_batch
    else:
        dim, batch = sizes.dim, sizes.batch
    return np.random.default_rng(0).standard_normal((batch, dim)).astype(dtype)


# ----------------------------------------------------------------------------- refflow models
def refflow_model(which, sizes):
    """The refflow model of ``which`` ("maf", "nsf", "realnvp"), seed 0 (public API only)."""
    import refflow
    if which == "maf":
        return refflow.MAF(sizes.dim, n_layers=sizes.layers, hidden=sizes.hidden, rng=0)
    if which == "realnvp":
        return refflow.RealNVP(sizes.rnvp_dim, n_layers=sizes.rnvp_layers,
                               hidden=sizes.rnvp_hidden, rng=0)
    rng = np.random.default_rng(0)
    # density order: step 0 (natural order) meets the data first, as zuko's layer 0; Chain
    # applies its list in the sampling direction, so the list is reversed.
    steps = [refflow.MaskedSplineAutoregressive(
                 sizes.dim, hidden=sizes.hidden, n_bins=sizes.bins, bound=sizes.bound,
                 order="natural" if k % 2 == 0 else "reverse", rng=rng)
             for k in range(sizes.layers)]
    return refflow.Flow(refflow.StandardNormal(sizes.dim), refflow.Chain(steps[::-1]))


def refflow_train(which, sizes, dtype):
    import refflow
    from bench_gemm import count_macs
    flow = refflow_model(which, sizes)
    opt = refflow.Adam(flow.params, lr=1e-4)
    x = data(sizes, which, dtype)

    def step():
        _, grads = flow.nll_and_grad(x)
        opt.step(grads)

    return Case(step, x.shape[0],
                info={"params": n_params(flow), "macs": count_macs(flow, x.shape[0])})


# ----------------------------------------------------------------------------- peer models
def zuko_model(which, sizes):
    torch, zuko = torch_or_skip("zuko")
    with torch_seed(0):
        if which == "maf":
            return zuko.flows.MAF(features=sizes.dim, transforms=sizes.layers,
                                  hidden_features=list(sizes.hidden))
        if which == "nsf":
            return zuko.flows.NSF(features=sizes.dim, transforms=sizes.layers, bins=sizes.bins,
                                  hidden_features=list(sizes.hidden))
        return zuko.flows.RealNVP(features=sizes.rnvp_dim, transforms=sizes.rnvp_layers,
                                  hidden_features=list(sizes.rnvp_hidden))


def nflows_model(which, sizes):
    torch, _ = torch_or_skip("nflows")
    from nflows.distributions.normal import StandardNormal
    from nflows.flows import Flow, MaskedAutoregressiveFlow
    from nflows.nn.nets import MLP
    from nflows.transforms import (AffineCouplingTransform, CompositeTransform,
                                   MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
                                   ReversePermutation)
    with torch_seed(0):
        if which == "maf":
            return MaskedAutoregressiveFlow(
                features=sizes.dim, hidden_features=sizes.hidden[0], num_layers=sizes.layers,
                num_blocks_per_layer=len(sizes.hidden) - 1, use_residual_blocks=False,
                use_random_masks=False, use_random_permutations=False,
                batch_norm_within_layers=False, batch_norm_between_layers=False)
        if which == "nsf":
            steps = []
            for _ in range(sizes.layers):
                steps += [ReversePermutation(sizes.dim),
                          MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                              features=sizes.dim, hidden_features=sizes.hidden[0],
                              num_bins=sizes.bins, tails="linear", tail_bound=sizes.bound,
                              num_blocks=len(sizes.hidden) - 1, use_residual_blocks=False,
                              random_mask=False)]
            return Flow(CompositeTransform(steps), StandardNormal([sizes.dim]))

        class Net(torch.nn.Module):
            """nflows' ``MLP``, taking (and ignoring) the ``context`` the coupling passes."""

            def __init__(self, n_in, n_out):
                super().__init__()
                self.mlp = MLP([n_in], [n_out], hidden_sizes=list(sizes.rnvp_hidden))

            def forward(self, inputs, context=None):
                return self.mlp(inputs)

        steps = []
        for k in range(sizes.rnvp_layers):
            mask = torch.ones(sizes.rnvp_dim)
            mask[k % 2::2] = -1   # > 0 transformed, <= 0 identity; alternating
            steps.append(AffineCouplingTransform(mask, Net))
        return Flow(CompositeTransform(steps), StandardNormal([sizes.rnvp_dim]))


def peer_model(peer, which, sizes, dtype):
    """``(model, log_prob)``: the peer's model in ``dtype`` and its ``x -> log q(x)``."""
    if peer == "zuko":
        model = zuko_model(which, sizes).to(torch_dtype(dtype))
        return model, lambda x: model().log_prob(x)
    model = nflows_model(which, sizes).to(torch_dtype(dtype))
    return model, model.log_prob


def peer_train(peer, which, sizes, dtype):
    torch, _ = torch_or_skip(peer)
    model, log_prob = peer_model(peer, which, sizes, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch_copy(data(sizes, which, dtype))

    def step():
        loss = -log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Case(step, x.shape[0], info={"params": n_torch_params(model)})


def build(workload, impl, sizes, dtype):
    """The :class:`Case` of ``workload`` for ``impl`` in ``dtype`` (``Skip`` if unavailable)."""
    which = workload.split("_")[0]
    if impl == "refflow":
        return refflow_train(which, sizes, dtype)
    return peer_train(impl, which, sizes, dtype)


__all__ = ["WORKLOADS", "UNIT", "build", "refflow_model", "peer_model", "data", "Skip"]
