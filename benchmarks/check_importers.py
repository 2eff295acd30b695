"""Importer agreement over randomly configured, briefly trained peer models, per peer.

    python benchmarks/check_importers.py --peers zuko,flowjax [--models 10] [--seed 0]

For each peer, ``--models`` randomly configured models (conditional ones included where the
peer supports them) are built with the peer's own constructors, trained for a few steps in the
peer, imported into refflow, and compared in float64: the maximum relative log-prob difference
(``|refflow - peer| / max(|peer|, 1)``) and the maximum relative gradient difference (per peer
parameter for torch peers through :func:`refflow.interop.compare`; for JAX peers ``jax.grad``
of the mean log-prob along random directions of every trainable leaf, against refflow's
gradient dotted with the imported parameters' change). One table per peer; exit status 1 if
any model exceeds 1e-10 (log-prob) or 1e-8 (gradient).

Peers register a function in ``PEERS``: ``fn(n_models, seed) -> list of (config, lp_err,
grad_err)``. Each peer's functions are in one block.
"""

import argparse
import sys

import numpy as np

RTOL_LOG_PROB, RTOL_GRAD = 1e-10, 1e-8
PEERS = {}


def register(name):
    def wrap(fn):
        PEERS[name] = fn
        return fn
    return wrap


# ========================================================================= zuko (imp_zj)
@register("zuko")
def check_zuko(n_models, seed):
    import torch
    import zuko
    from zuko.flows.neural import MNN
    from zuko.lazy import UnconditionalDistribution

    from refflow.interop import compare, from_zuko
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models):
        torch.manual_seed(seed + m)
        dim, context = int(rng.integers(2, 5)), int(rng.choice([0, 2]))
        layers, names = [], []
        for _ in range(int(rng.integers(1, 4))):
            order = torch.as_tensor(rng.permutation(dim))
            hidden = [int(h) for h in rng.integers(dim, 16, size=rng.integers(1, 3))]
            kind = str(rng.choice(["naf", "sos", "bpf", "bernstein", "affine", "spline"]))
            kw = dict(hidden_features=hidden, order=order)
            if kind == "naf":
                s = int(rng.integers(1, 5))
                kw.update(univariate=MNN(signal=s, stack=dim,
                                         hidden_features=[int(rng.integers(2, 9))]),
                          shapes=[(s,)])
            elif kind == "sos":
                from zuko.flows.polynomial import ShiftedSOSPTransform
                K, L = int(rng.integers(1, 4)), int(rng.integers(1, 5))
                kw.update(univariate=ShiftedSOSPTransform, shapes=[(K, L + 1), ()])
            elif kind in ("bpf", "bernstein"):
                kw.update(univariate=zuko.transforms.BoundedBernsteinTransform if kind == "bpf"
                          else zuko.transforms.BernsteinTransform,
                          shapes=[(int(rng.integers(3, 10)),)])
            elif kind == "spline":
                kw.update(univariate=zuko.transforms.MonotonicRQSTransform,
                          shapes=[(5,), (5,), (4,)])
            layers.append(zuko.flows.MaskedAutoregressiveTransform(dim, context, **kw))
            names.append(kind)
            if rng.random() < 0.5:
                lin = str(rng.choice(["lu", "rotation"]))
                mat = torch.randn(dim, dim) * 0.4 + (torch.eye(dim) if lin == "lu" else 0)
                f = zuko.transforms.LULinearTransform if lin == "lu" else \
                    zuko.transforms.RotationTransform
                layers.append(zuko.flows.UnconditionalTransform(f, mat))
                names.append(lin)
        if rng.random() < 0.3:  # zuko's GF (rotations between Gaussianization layers)
            t, k = int(rng.integers(1, 4)), int(rng.integers(2, 6))
            flow = zuko.flows.GF(dim, context, transforms=t, components=k, hidden_features=[8])
            names, base_name = [f"GF(transforms={t}, components={k})"], "standard"
        else:
            base_name = str(rng.choice(["standard", "normal", "box"]))
            if base_name == "box":
                base = UnconditionalDistribution(zuko.distributions.BoxUniform,
                                                 torch.full((dim,), -40.0),
                                                 torch.full((dim,), 40.0), buffer=True)
            else:
                base = UnconditionalDistribution(
                    zuko.distributions.DiagNormal,
                    torch.zeros(dim) if base_name == "standard" else torch.linspace(-.5, .5, dim),
                    torch.ones(dim) * (1.0 if base_name == "standard" else 1.3), buffer=True)
            flow = zuko.flows.Flow(layers, base)
        x = 1.5 * rng.standard_normal((64, dim))
        c = rng.standard_normal((64, context)) if context else None
        # brief training: a few Adam steps in float32 (zuko's default)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
        xt = torch.as_tensor(x, dtype=torch.float32)
        ct = None if c is None else torch.as_tensor(c, dtype=torch.float32)
        for _ in range(5):
            opt.zero_grad()
            (-flow(ct).log_prob(xt).mean()).backward()
            opt.step()
        report = compare(flow, from_zuko(flow), x[:24], None if c is None else c[:24])
        config = f"D={dim} C={context} base={base_name} [{', '.join(names)}]"
        rows.append((config, report.max_log_prob_rel, report.max_grad_rel))
    return rows


# ====================================================================== flowjax (imp_zj)
@register("flowjax")
def check_flowjax(n_models, seed):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import paramax
    jax.config.update("jax_enable_x64", True)
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal, StandardNormal, StudentT, Uniform
    from flowjax.flows import coupling_flow, masked_autoregressive_flow
    from flowjax.train import fit_to_data

    from refflow.interop import from_flowjax
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models):
        dim = int(rng.integers(2, 5))
        cond = None if rng.random() < 0.5 else int(rng.integers(1, 3))
        kind = str(rng.choice(["maf", "coupling"]))
        tr_kind = str(rng.choice(["rqs", "default"]))
        base_kind = str(rng.choice(["standard", "normal", "studentt", "uniform"]))
        base = {"standard": StandardNormal((dim,)),
                "normal": Normal(jnp.full(dim, 0.3), jnp.full(dim, 1.4)),
                "studentt": StudentT(jnp.full(dim, 5.0)),
                "uniform": Uniform(jnp.full(dim, -40.0), jnp.full(dim, 40.0))}[base_kind]
        kw = dict(base_dist=base, cond_dim=cond, flow_layers=int(rng.integers(1, 4)),
                  invert=bool(rng.random() < 0.7), nn_width=int(rng.integers(4, 12)))
        if tr_kind == "rqs":
            kw["transformer"] = RationalQuadraticSpline(knots=int(rng.integers(3, 7)),
                                                        interval=[2.0, 3.0, (-1.5, 2.5)][
                                                            int(rng.integers(3))])
        build = masked_autoregressive_flow if kind == "maf" else coupling_flow
        dist = build(jr.key(seed + m), **kw)
        x = 1.5 * rng.standard_normal((64, dim))
        c = None if cond is None else rng.standard_normal((64, cond))
        # brief training: a few epochs of FlowJAX's own maximum-likelihood loop
        dist, _ = fit_to_data(jr.key(m), dist, data=(x,) if c is None else (x, c),
                              max_epochs=3, batch_size=32, learning_rate=1e-2,
                              return_best=False, show_progress=False)
        model = from_flowjax(dist)
        xs, cs = x[:24], None if c is None else c[:24]
        args = [jnp.asarray(a) for a in (xs, cs) if a is not None]
        lp_peer = np.asarray(jax.vmap(dist.log_prob)(*args))
        lp_ref = model.log_prob(xs, context=cs)
        lp_err = float(np.max(np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)))
        params, static = eqx.partition(dist.bijection, eqx.is_inexact_array,
                                       is_leaf=lambda leaf: isinstance(leaf,
                                                                       paramax.NonTrainable))

        def mean_lp(p):
            d = eqx.tree_at(lambda t: t.bijection, dist, eqx.combine(p, static))
            return jnp.mean(jax.vmap(d.log_prob)(*args))

        grads = jax.grad(mean_lp)(params)
        _, ref = model.nll_and_grad(xs, context=cs)
        leaves, tree = jax.tree_util.tree_flatten(params)
        g_err = 0.0
        for _ in range(3):  # random directions through every trainable leaf
            delta = [rng.normal(size=leaf.shape) for leaf in leaves]
            peer = sum(float(np.sum(np.asarray(g) * d))
                       for g, d in zip(jax.tree_util.tree_leaves(grads), delta))
            moved = jax.tree_util.tree_unflatten(
                tree, [jnp.asarray(np.asarray(leaf) + d) for leaf, d in zip(leaves, delta)])
            after = from_flowjax(eqx.tree_at(lambda t: t.bijection, dist,
                                             eqx.combine(moved, static))).params
            mine = sum(float(np.sum(-ref[k] * (after[k] - model.params[k]))) for k in ref)
            g_err = max(g_err, abs(mine - peer) / max(abs(peer), 1.0))
        if tr_kind == "rqs":
            tr_kind = f"rqs(knots={kw['transformer'].knots}, {kw['transformer'].interval})"
        config = (f"{kind} {tr_kind} D={dim} C={cond or 0} layers={kw['flow_layers']} "
                  f"invert={kw['invert']} base={base_kind}")
        rows.append((config, lp_err, g_err))
    return rows


# ===================================================================================== main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", required=True,
                        help=f"comma-separated, from {sorted(PEERS)}")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {sorted(PEERS)}")
    ok = True
    for peer in peers:
        rows = PEERS[peer](args.models, args.seed)
        width = max(len(r[0]) for r in rows)
        print(f"\n## {peer}: {len(rows)} models\n")
        print(f"| {'model config':<{width}} | max rel log_prob err | max rel grad err |")
        print(f"|{'-' * (width + 2)}|---------------------:|-----------------:|")
        for config, lp, g in rows:
            print(f"| {config:<{width}} | {lp:>20.2e} | {g:>16.2e} |")
            ok &= lp <= RTOL_LOG_PROB and g <= RTOL_GRAD
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
