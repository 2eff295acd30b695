"""The limit: this machine's matrix-multiply rate, measured in the same run, and the
multiply-adds each training step must do.

GEMM workloads (NumPy ``matmul`` with ``out=`` into preallocated arrays, float64 and float32,
refflow's BLAS and threads; GFLOP/s = 2 * multiply-adds / time):

- ``gemm_square``: ``(1024, 1024) @ (1024, 1024)``, the machine's best case.
- ``gemm_maf_hidden``: ``(512, 256) @ (256, 256)``, the MAF step's hidden-to-hidden product.
- ``gemm_plan_maf`` / ``gemm_plan_nsf`` / ``gemm_plan_realnvp``: every dense product one
  training step of that model needs (:func:`gemm_plan`: per weight matrix the forward product,
  the weight gradient and the input cotangent, with the transposes the passes use), run back to
  back: the GEMM rate at exactly the step's shapes.

For each training step, :func:`count_macs` gives the multiply-adds it must do, dense (every
entry of every weight matrix) and masked (only MADE's nonzero mask entries). The limit table
reports ``achieved GFLOP/s = 2 * MACs / step time`` for both counts and its fraction of the
same-dtype GEMM rate at the step's shapes (``gemm_plan_*``) and at the square shape. The count
ignores the elementwise work (biases, activations, scale maps and splines, log-dets, the
optimizer), so 100% is out of reach; a step dominated by its GEMMs can come close to the plan
rate, the square rate is what the BLAS does at its best. The masked fraction can only be
reached by skipping the masked zeros (degree-sorted block products).

A fraction above 100% is possible and not an error: NumPy's ``matmul`` is slow on skinny
shapes (measured here: RealNVP's ``(4096, 1) @ (1, 64)`` first-layer product at 1.7 GFLOP/s and
``(4096, 64) @ (64, 2)`` at 8.5, against ~40 for ``(4096, 64) @ (64, 64)``, float64, one
thread), so a step that computes such a product another way (an outer product, a fused kernel)
beats the plan rate; on a loaded machine the square rate itself is noisy.

Each GEMM workload runs in a process of its own (``run.py``); ``gemm_square`` and
``gemm_maf_hidden`` never import refflow, ``gemm_plan_*`` import it to read the step's shapes.
"""

import numpy as np

from common import Case

WORKLOADS = {
    "gemm_square": "GEMM (1024, 1024) @ (1024, 1024)",
    "gemm_maf_hidden": "GEMM (512, 256) @ (256, 256)",
    "gemm_plan_maf": "GEMMs of one MAF train step",
    "gemm_plan_nsf": "GEMMs of one NSF train step",
    "gemm_plan_realnvp": "GEMMs of one RealNVP train step",
}
UNIT = "FLOP/s"
REFFLOW_ONLY = True   # run.py starts no peer process for these workloads


def weight_matrices(flow):
    """Every dense or masked weight matrix of a refflow flow's conditioners.

    The one place where the benchmarks read a model's inside beyond the public API: the
    attributes ``flow.bijector.layers``, ``layer.made`` / ``layer.conditioner``, ``net.masks``
    and ``net.params["w0"], ["w1"], ...``.

    Returns a list of dicts ``{layer, key, out, in, nnz, data_side}`` in the order the data meet
    them (density direction: ``flow.bijector.layers[-1]`` first). ``nnz`` is the number of
    nonzero mask entries (``made.masks[k].sum()``) for a MADE, ``out * in`` for an MLP.
    ``data_side`` marks the first matrix of the first layer the data meet, whose input is the
    data themselves.
    """
    mats = []
    layers = list(flow.bijector.layers)[::-1]
    for position, layer in enumerate(layers):
        net = getattr(layer, "made", None) or getattr(layer, "conditioner", None)
        if net is None:
            continue  # Reverse, permutations: no multiply-adds
        masks = getattr(net, "masks", None)
        k = 0
        while f"w{k}" in net.params:
            out_f, in_f = net.params[f"w{k}"].shape
            nnz = int(np.count_nonzero(masks[k])) if masks is not None else out_f * in_f
            mats.append({"layer": position, "key": f"w{k}", "out": out_f, "in": in_f,
                         "nnz": nnz, "data_side": not mats})
            k += 1
    return mats


def count_macs(flow, batch):
    """Multiply-adds of one training step (``nll_and_grad``) of ``flow`` on ``batch`` rows.

    For every dense or masked weight matrix ``W`` of shape ``(out, in)`` and batch ``n``:

    - forward ``a = h W^T``: ``n * out * in``;
    - backward ``2 * n * out * in``: the weight gradient ``W_bar = a_bar^T h`` and the input
      cotangent ``h_bar = a_bar W``.

    The input cotangent of the first matrix the data meet (first MADE or coupling conditioner of
    the first layer in the density direction) is the data's own cotangent, which a training step
    does not need; it is **not** counted (``data_side`` gives its size: add it for an
    implementation that computes it anyway). Every other layer's input cotangent is needed,
    since that input is the previous layer's output.

    ``dense`` counts every entry of ``W``; ``masked`` only MADE's nonzero mask entries
    (``made.masks[k].sum()`` in place of ``out * in``); for coupling MLPs the two are equal.
    Elementwise work (biases, activations, scale maps, splines, log-dets, Adam) is ignored.

    Returns ``{"dense": int, "masked": int, "data_side_dense": int, "data_side_masked": int}``.
    """
    dense = masked = side_dense = side_masked = 0
    for m in weight_matrices(flow):
        full, nnz = batch * m["out"] * m["in"], batch * m["nnz"]
        if m["data_side"]:
            dense += 2 * full                 # forward + weight gradient
            masked += 2 * nnz
            side_dense, side_masked = full, nnz
        else:
            dense += 3 * full                 # forward + weight gradient + input cotangent
            masked += 3 * nnz
    return {"dense": dense, "masked": masked, "data_side_dense": side_dense,
            "data_side_masked": side_masked}


def gemm_plan(flow, batch):
    """The dense products of :func:`count_macs` as ``(a_shape, b_shape, transpose_a,
    transpose_b)``: forward ``h (n, in) @ W^T``, weight gradient ``a_bar^T @ h``, input
    cotangent ``a_bar (n, out) @ W`` (not for the data-side matrix)."""
    plan = []
    for m in weight_matrices(flow):
        n, o, i = batch, m["out"], m["in"]
        plan.append(((n, i), (o, i), False, True))     # h @ W.T        -> (n, out)
        plan.append(((n, o), (n, i), True, False))     # a_bar.T @ h    -> (out, in)
        if not m["data_side"]:
            plan.append(((n, o), (o, i), False, False))  # a_bar @ W    -> (n, in)
    return plan


def _plan_case(plan, dtype):
    """One call runs every product of ``plan`` with ``out=`` into preallocated arrays."""
    rng = np.random.default_rng(0)
    ops, macs = [], 0
    for a_shape, b_shape, ta, tb in plan:
        a = rng.standard_normal(a_shape).astype(dtype)
        b = rng.standard_normal(b_shape).astype(dtype)
        a, b = (a.T if ta else a), (b.T if tb else b)
        out = np.empty((a.shape[0], b.shape[1]), dtype=dtype)
        ops.append((a, b, out))
        macs += a.shape[0] * a.shape[1] * b.shape[1]

    def run():
        for a, b, out in ops:
            np.matmul(a, b, out=out)

    return Case(run, 2 * macs)


def build(workload, impl, sizes, dtype):
    """GEMM workloads run for refflow's NumPy only (the peers' torch GEMM is not timed)."""
    from common import Skip
    if impl != "refflow":
        raise Skip(f"{impl}: not timed (NumPy's GEMM rate only)")
    if workload == "gemm_square":
        s = sizes.gemm_square
        return _plan_case([((s, s), (s, s), False, False)], dtype)
    if workload == "gemm_maf_hidden":
        h = sizes.hidden[-1]
        return _plan_case([((sizes.batch, h), (h, h), False, False)], dtype)
    from bench_train import refflow_model
    which = workload.rsplit("_", 1)[1]
    batch = sizes.rnvp_batch if which == "realnvp" else sizes.batch
    return _plan_case(gemm_plan(refflow_model(which, sizes), batch), dtype)
