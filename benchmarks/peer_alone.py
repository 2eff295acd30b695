"""A peer timed alone, as a new user would: torch and the peer only, threads set first.

Usage::

    python benchmarks/peer_alone.py THREADS PEER WORKLOAD DTYPE [--warmup W] [--repeats R]
                                    [--rows N] [--smoke]

``THREADS`` comes first because ``torch.set_num_threads(THREADS)`` is the statement right after
``import torch``, before anything else is imported (only ``sys`` is, to read it). This script shares no code with the harness
(``run.py`` and its modules): it builds the peer's model from its own constants, sets
``torch.set_default_dtype`` instead of converting the model, and draws its data with NumPy's
``default_rng(0)`` in the harness's recipes (written out here again), so that both time the same
values: the spline workloads (and nsf_train) index the rows inside the tails, and the sizes of
those intermediates decide glibc's allocations; measured, nflows' float32 ``spline_inv`` takes
250-290 ms on torch's seed-0 draws and 340-420 ms on NumPy's, with 3-5x the page faults, and
the same spread appears between torch's own seeds 0-4. It prints one JSON line
``{"peer", "workload", "dtype", "threads", "times", "params"}`` (``maf_sample`` also gives
``log_prob_times``, one ``log_prob`` of the rows it sampled). ``run.py`` compares its median with
the harness's median of the same case: the self-check.

Workloads and models (the harness's fixed configurations): ``maf_train``, ``nsf_train``,
``realnvp_train`` (``loss = -log_prob(x).mean(); zero_grad; backward; Adam.step``),
``maf_log_prob`` (4096 rows, no_grad), ``maf_sample`` (``--rows``, default 10,000, no_grad) and
``spline_fwd`` / ``spline_inv`` / ``spline_grad`` (2^20 elements, K 8; nflows' unconstrained
spline with linear tails, B 3; zuko's ``MonotonicRQSTransform``, bound 5). ``--smoke``: the
harness's tiny smoke sizes.
"""

import sys

THREADS = int(sys.argv[1]) if sys.argv[1:2] and sys.argv[1].isdigit() else 0  # 0: --help, misuse

import torch  # noqa: E402

if THREADS:
    torch.set_num_threads(THREADS)  # first thing after importing torch

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

FULL = dict(dim=64, layers=5, hidden=256, batch=512, bins=8, bound=3.0, rnvp_dim=2,
            rnvp_layers=8, rnvp_hidden=64, rnvp_batch=4096, log_prob_batch=4096, spline_n=2 ** 20)
SMOKE = dict(dim=4, layers=2, hidden=8, batch=16, bins=4, bound=3.0, rnvp_dim=2, rnvp_layers=2,
             rnvp_hidden=8, rnvp_batch=32, log_prob_batch=32, spline_n=256)
SPLINE_K = 8


def zuko_model(which, c):
    import zuko
    if which == "maf":
        return zuko.flows.MAF(features=c["dim"], transforms=c["layers"],
                              hidden_features=[c["hidden"]] * 2)
    if which == "nsf":
        return zuko.flows.NSF(features=c["dim"], transforms=c["layers"], bins=c["bins"],
                              hidden_features=[c["hidden"]] * 2)
    return zuko.flows.RealNVP(features=c["rnvp_dim"], transforms=c["rnvp_layers"],
                              hidden_features=[c["rnvp_hidden"]] * 2)


def nflows_model(which, c):
    from nflows import distributions, flows, nn, transforms
    if which == "maf":
        return flows.MaskedAutoregressiveFlow(
            features=c["dim"], hidden_features=c["hidden"], num_layers=c["layers"],
            num_blocks_per_layer=1, use_residual_blocks=False, use_random_masks=False,
            use_random_permutations=False, batch_norm_within_layers=False,
            batch_norm_between_layers=False)
    if which == "nsf":
        steps = []
        for _ in range(c["layers"]):
            steps.append(transforms.ReversePermutation(c["dim"]))
            steps.append(transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                features=c["dim"], hidden_features=c["hidden"], num_bins=c["bins"],
                tails="linear", tail_bound=c["bound"], num_blocks=1, use_residual_blocks=False,
                random_mask=False))
        return flows.Flow(transforms.CompositeTransform(steps),
                          distributions.StandardNormal([c["dim"]]))
    class Conditioner(torch.nn.Module):  # nflows' MLP, called with a context it ignores
        def __init__(self, n_in, n_out):
            super().__init__()
            self.mlp = nn.nets.MLP([n_in], [n_out], hidden_sizes=[c["rnvp_hidden"]] * 2)

        def forward(self, inputs, context=None):
            return self.mlp(inputs)

    steps = []
    for k in range(c["rnvp_layers"]):
        mask = torch.ones(c["rnvp_dim"])
        mask[k % 2::2] = -1    # alternating halves
        steps.append(transforms.AffineCouplingTransform(mask, Conditioner))
    return flows.Flow(transforms.CompositeTransform(steps),
                      distributions.StandardNormal([c["rnvp_dim"]]))


DTYPE = {torch.float64: np.float64, torch.float32: np.float32}


def tensor(a):
    """A tensor holding a copy of the NumPy array ``a`` in torch's default dtype."""
    return torch.from_numpy(a.astype(DTYPE[torch.get_default_dtype()])).clone()


def normal(shape):
    """``shape`` N(0, 1) draws, NumPy ``default_rng(0)``, in torch's default dtype."""
    return tensor(np.random.default_rng(0).standard_normal(shape))


def time_calls(fn, warmup, repeats, warmup_fn=None):
    for _ in range(warmup):
        (warmup_fn or fn)()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def flow_case(peer, workload, c, rows):
    which = workload.split("_")[0]
    torch.manual_seed(0)
    model = (zuko_model if peer == "zuko" else nflows_model)(which, c)
    log_prob = (lambda x: model().log_prob(x)) if peer == "zuko" else model.log_prob
    params = sum(p.numel() for p in model.parameters())
    if workload.endswith("_train"):
        dim, batch = ((c["rnvp_dim"], c["rnvp_batch"]) if which == "realnvp"
                      else (c["dim"], c["batch"]))
        x = normal((batch, dim))
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            loss = -log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step, None, params, None
    if workload == "maf_log_prob":
        x = normal((c["log_prob_batch"], c["dim"]))
        return (lambda: log_prob(x)), None, params, None
    # maf_sample
    draw = (lambda n: model().sample((n,))) if peer == "zuko" else model.sample
    last = []

    def sample():
        last[:] = [draw(rows)]

    return sample, None, params, (lambda: log_prob(last[0]))


def spline_case(peer, workload, c):
    n = c["spline_n"]
    dtype = DTYPE[torch.get_default_dtype()]
    rng = np.random.default_rng(0)
    x = tensor((2.0 * rng.standard_normal(n)).astype(dtype))
    uw, uh = (tensor(rng.standard_normal((n, SPLINE_K)).astype(dtype)) for _ in range(2))
    ud = tensor(rng.standard_normal((n, SPLINE_K - 1)).astype(dtype))
    if peer == "nflows":
        from nflows.transforms.splines.rational_quadratic import \
            unconstrained_rational_quadratic_spline as rqs

        def call(inp, w, h, d, inverse=False):
            return rqs(inp, w, h, d, inverse=inverse, tails="linear", tail_bound=3.0)
    else:
        from zuko.transforms import MonotonicRQSTransform

        def call(inp, w, h, d, inverse=False):
            t = MonotonicRQSTransform(w, h, d, bound=5.0)
            return (t.inv if inverse else t).call_and_ladj(inp)
    y = call(x, uw, uh, ud)[0]
    if workload == "spline_fwd":
        return lambda: call(x, uw, uh, ud)
    if workload == "spline_inv":
        return lambda: call(y, uw, uh, ud, inverse=True)

    def grad():
        with torch.enable_grad():
            args = [t.clone().requires_grad_(True) for t in (x, uw, uh, ud)]
            out, ld = call(*args)
            (out.sum() + ld.sum()).backward()

    return grad


def main():
    parser = argparse.ArgumentParser(prog="python benchmarks/peer_alone.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("threads", type=int)
    parser.add_argument("peer", choices=("zuko", "nflows"))
    parser.add_argument("workload", choices=("maf_train", "nsf_train", "realnvp_train",
                                             "maf_log_prob", "maf_sample", "spline_fwd",
                                             "spline_inv", "spline_grad"))
    parser.add_argument("dtype", choices=("float64", "float32"))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rows", type=int, default=10_000, help="maf_sample rows")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_default_dtype(getattr(torch, args.dtype))
    c = SMOKE if args.smoke else FULL
    out = {"peer": args.peer, "workload": args.workload, "dtype": args.dtype,
           "threads": torch.get_num_threads()}
    if args.workload.startswith("spline"):
        with torch.no_grad():
            out["times"] = time_calls(spline_case(args.peer, args.workload, c), args.warmup,
                                      args.repeats)
    else:
        fn, warm, params, follow = flow_case(args.peer, args.workload, c, args.rows)
        out["params"] = params
        with torch.set_grad_enabled(args.workload.endswith("_train")):
            out["times"] = time_calls(fn, args.warmup, args.repeats, warm)
            if follow is not None:
                out["log_prob_times"] = time_calls(follow, args.warmup, args.repeats)
    out["median_s"] = statistics.median(out["times"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
