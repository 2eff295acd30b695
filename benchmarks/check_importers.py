"""Agreement of the importers with their peers over randomly configured, briefly trained models.

For each peer named in ``--peers``, its registered check builds at least ten models with random
options (conditional ones where the peer has them), trains each for a few Adam steps with the
peer's own log-likelihood, imports it with ``refflow.interop`` and runs
:func:`refflow.interop.compare` on fresh points: the table gives, per model, its configuration,
the largest relative log-prob error (target <= 1e-10) and the largest relative gradient error
(target <= 1e-8). Exit status 1 if any model misses a target.

    python benchmarks/check_importers.py --peers normflows,pyro

A peer's check is a generator function ``check(seed, n_models)`` yielding ``(config,
max_log_prob_rel, max_grad_rel)`` per model (``nan`` for a gradient not compared), registered
with ``@register("name")``; each peer's functions are kept in one block below.
"""

import argparse
import sys

import numpy as np

RTOL_LOG_PROB = 1e-10   # float64 closed forms: rounding only
RTOL_GRAD = 1e-8        # gradients of a mean log-prob: rounding of ~1e2 operations per point

CHECKS = {}


def register(name):
    """Register ``check(seed, n_models)`` as the check of peer ``name``."""
    def wrap(fn):
        if name in CHECKS:
            raise ValueError(f"check_importers: peer {name!r} registered twice")
        CHECKS[name] = fn
        return fn
    return wrap


def _train(params, loss_fn, steps, lr=1e-2):
    import torch
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()


def _data(rng, n, dim, context_dim):
    """Two-moons-like correlated data with a context that shifts it."""
    c = rng.normal(size=(n, context_dim)) if context_dim else None
    x = rng.normal(size=(n, dim)) * np.linspace(0.5, 1.5, dim)
    x[:, 1:] += 0.5 * x[:, :1] ** 2
    if c is not None:
        x += 0.3 * c[:, :1]
    return x, c


# ------------------------------------------------------------------------- normflows block
def _normflows_model(rng, conditional):
    import normflows as nf
    import torch
    dim = int(rng.integers(2, 6))
    ctx = 2 if conditional else None
    flows, config = [], []
    kinds = ["maa", "arqs", "crqs"] if conditional else \
        ["maa", "arqs", "crqs", "masked_affine", "coupling_block", "actnorm", "lu", "planar"]
    for _ in range(int(rng.integers(1, 4))):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        hidden, blocks, bins = int(rng.integers(4, 17)), int(rng.integers(1, 3)), \
            int(rng.integers(2, 9))
        if kind == "maa":
            flows.append(nf.flows.MaskedAffineAutoregressive(dim, hidden, context_features=ctx,
                                                             num_blocks=blocks))
            config.append(f"maa(h{hidden},b{blocks})")
        elif kind == "arqs":
            perm = bool(rng.integers(0, 2))
            flows.append(nf.flows.AutoregressiveRationalQuadraticSpline(
                dim, blocks, hidden, num_context_channels=ctx, num_bins=bins,
                permute_mask=perm, tail_bound=3.0))
            config.append(f"arqs(K{bins}{',perm' if perm else ''})")
        elif kind == "crqs":
            rev = bool(rng.integers(0, 2))
            flows.append(nf.flows.CoupledRationalQuadraticSpline(
                dim, blocks, hidden, num_context_channels=ctx, num_bins=bins, reverse_mask=rev))
            config.append(f"crqs(K{bins}{',rev' if rev else ''})")
        elif kind == "masked_affine":
            b = torch.tensor([(j + len(flows)) % 2 for j in range(dim)], dtype=torch.float64)
            sizes = [dim, hidden, dim]
            flows.append(nf.flows.MaskedAffineFlow(b, nf.nets.MLP(list(sizes)),
                                                   nf.nets.MLP(list(sizes), init_zeros=True)))
            config.append("masked_affine")
        elif kind == "coupling_block":
            n_a = -(-dim // 2)
            flows.append(nf.flows.AffineCouplingBlock(
                nf.nets.MLP([n_a, hidden, 2 * (dim - n_a)], init_zeros=True)))
            config.append("coupling_block")
        elif kind == "actnorm":
            flows.append(nf.flows.ActNorm(dim))
            config.append("actnorm")
        elif kind == "lu":
            flows.append(nf.flows.LULinearPermute(dim))
            config.append("lu_permute")
        else:
            flows.append(nf.flows.Planar((dim,)))
            config.append("planar")
        flows.append(nf.flows.Permute(dim))
    if conditional:
        model = nf.ConditionalNormalizingFlow(nf.distributions.DiagGaussian(dim), flows)
        base = "diag"
    elif rng.integers(0, 2):
        k = int(rng.integers(2, 4))
        model = nf.NormalizingFlow(nf.distributions.GaussianMixture(k, dim), flows)
        base = f"gmm{k}"
    else:
        model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), flows)
        base = "diag"
    ctx_txt = ",ctx2" if conditional else ""
    return model.double(), dim, f"D{dim}{ctx_txt} {base} " + "+".join(config), \
        "planar" in config


@register("normflows")
def check_normflows(seed, n_models):
    import torch

    from refflow.interop import compare, from_normflows
    for m in range(n_models):
        rng = np.random.default_rng([seed, m])
        torch.manual_seed(int(rng.integers(2 ** 31)))
        conditional = m % 3 == 2
        model, dim, config, planar = _normflows_model(rng, conditional)
        ctx = 2 if conditional else 0
        x, c = _data(rng, 256, dim, ctx)
        xt = torch.as_tensor(x)
        ct = None if c is None else torch.as_tensor(c)
        if planar:
            # normflows cannot invert its Planar: trained by the reverse KL to N(1, I) instead
            def target_loss():
                z, log_q = model.q0(64)
                log_det = 0.0
                for flow in model.flows:
                    z, ld = flow(z)
                    log_det = log_det + ld
                return (0.5 * ((z - 1.0) ** 2).sum(1) + log_q - log_det).mean()
        elif conditional:
            target_loss = lambda: -model.log_prob(xt, ct).mean()  # noqa: E731
        else:
            target_loss = lambda: -model.log_prob(xt).mean()  # noqa: E731
        _train(model.parameters(), target_loss, steps=30)
        ours = from_normflows(model)
        if planar:
            # normflows scores only its own samples: compare on the sampling path
            z = rng.normal(size=(64, dim))
            zt, log_det = torch.as_tensor(z), 0.0
            with torch.no_grad():
                for flow in model.flows:
                    zt, ld = flow(zt)
                    log_det = log_det + ld
                lp_peer = (model.q0.log_prob(torch.as_tensor(z)) - log_det).numpy()
            lp_ref = ours.log_prob(zt.numpy())
            rel = np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)
            yield config + " [samples; no grads]", float(rel.max()), float("nan")
            continue
        xe, ce = _data(np.random.default_rng([seed, m, 1]), 128, dim, ctx)
        report = compare(model, ours, xe, ce)
        yield config, report.max_log_prob_rel, report.max_grad_rel


# ------------------------------------------------------------------------------ Pyro block
def _pyro_transform(kind, dim, rng, context):
    import pyro.distributions.transforms as T
    import torch
    from pyro.nn import AutoRegressiveNN, DenseNN
    hidden = [int(rng.integers(dim + 2, dim + 12)) for _ in range(int(rng.integers(1, 3)))]
    bins = int(rng.integers(2, 9))
    order = ["linear", "quadratic"][int(rng.integers(0, 2))]
    sizes = [bins, bins, bins - 1] + ([bins] if order == "linear" else [])
    if kind == "iaf":
        stable = bool(rng.integers(0, 2))
        if context:
            t = T.conditional_affine_autoregressive(dim, 2, hidden_dims=hidden, stable=stable)
        else:
            t = T.AffineAutoregressive(AutoRegressiveNN(dim, hidden), stable=stable)
        return t, f"iaf{'-stable' if stable else ''}"
    if kind == "coupling":
        split = int(rng.integers(1, dim))
        if context:
            return T.conditional_affine_coupling(dim, 2, hidden_dims=hidden,
                                                 split_dim=split), f"coupling(s{split})"
        return T.AffineCoupling(split, DenseNN(split, hidden, [dim - split, dim - split],
                                               nonlinearity=torch.nn.Tanh())), \
            f"coupling(s{split},tanh)"
    if kind == "spline":
        return T.Spline(dim, count_bins=bins, order=order), f"spline({order[0]},K{bins})"
    if kind == "spline_coupling":
        split = int(rng.integers(1, dim))
        net = DenseNN(split, hidden, [(dim - split) * k for k in sizes])
        return T.SplineCoupling(dim, split, net, count_bins=bins, order=order), \
            f"spline_coupling({order[0]},K{bins},s{split})"
    if context:
        return T.conditional_spline_autoregressive(dim, 2, hidden_dims=hidden, count_bins=bins), \
            f"spline_ar(l,K{bins})"
    return T.SplineAutoregressive(dim, AutoRegressiveNN(dim, hidden, param_dims=sizes),
                                  count_bins=bins, order=order), f"spline_ar({order[0]},K{bins})"


@register("pyro")
def check_pyro(seed, n_models):
    import pyro.distributions as pd
    import pyro.distributions.transforms as T
    import torch

    from refflow.interop import compare, from_pyro
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)   # Pyro builds masks and parameters in it
    try:
        for m in range(n_models):
            rng = np.random.default_rng([seed, m])
            torch.manual_seed(int(rng.integers(2 ** 31)))
            conditional = m % 3 == 2
            dim = int(rng.integers(2, 6))
            kinds = ["iaf", "coupling", "spline_ar"] if conditional else \
                ["iaf", "coupling", "spline", "spline_coupling", "spline_ar"]
            transforms, config = [], []
            for _ in range(int(rng.integers(1, 4))):
                t, name = _pyro_transform(kinds[int(rng.integers(0, len(kinds)))], dim, rng,
                                          conditional)
                transforms += [t, T.Permute(torch.randperm(dim))]
                config.append(name)
            base = pd.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
            cls = pd.ConditionalTransformedDistribution if conditional else \
                pd.TransformedDistribution
            dist = cls(base, transforms)
            ctx = 2 if conditional else 0
            x, c = _data(rng, 256, dim, ctx)
            xt = torch.as_tensor(x)
            ct = None if c is None else torch.as_tensor(c)
            params = [p for t in transforms if isinstance(t, torch.nn.Module)
                      for p in t.parameters()]

            def loss():
                # a new tensor each step: Pyro's transforms cache their last (x, y) by identity
                d = dist if ct is None else dist.condition(ct)
                return -d.log_prob(xt.clone()).mean()

            _train(params, loss, steps=30)
            ours = from_pyro(dist)
            xe, ce = _data(np.random.default_rng([seed, m, 1]), 128, dim, ctx)
            report = compare(dist, ours, xe, ce)
            yield (f"D{dim}{',ctx2' if conditional else ''} " + "+".join(config),
                   report.max_log_prob_rel, report.max_grad_rel)
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------------------------- driver
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", required=True,
                        help=f"comma-separated, among {sorted(CHECKS)}")
    parser.add_argument("--models", type=int, default=10, help="models per peer (>= 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in CHECKS]
    if unknown or not peers:
        parser.error(f"unknown peers {unknown}; registered: {sorted(CHECKS)}")
    if args.models < 1:
        parser.error("--models must be >= 1")
    failed = False
    for peer in peers:
        print(f"\n{peer}: {args.models} models (targets: log-prob <= {RTOL_LOG_PROB:.0e}, "
              f"gradients <= {RTOL_GRAD:.0e}, relative)")
        print(f"  {'max lp rel':>10}  {'max grad rel':>12}  model", flush=True)
        for config, lp, grad in CHECKS[peer](args.seed, args.models):
            bad = not lp <= RTOL_LOG_PROB or (grad == grad and not grad <= RTOL_GRAD)
            failed |= bad
            print(f"  {lp:>10.2e}  {grad:>12.2e}  {config}{'  FAIL' if bad else ''}",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
