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

Gradients: per peer parameter through :func:`refflow.interop.compare`: torch peers by
autograd, JAX peers (FlowJAX) by ``jax.grad`` of the mean log-prob with respect to every
trainable leaf (the base's included).
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
#: normflows layers imported since the first check: every unconditional model has one of them
#: (in turn), so that ten models cover them all
_NORMFLOWS_NEW = ["radial", "coupling_sigmoid", "coupling_sigmoid_inv"]
#: layers normflows cannot invert: a model with one is scored on its own samples
_NORMFLOWS_FORWARD_ONLY = ("planar", "radial")


def _normflows_model(rng, conditional, first=None):
    import normflows as nf
    import torch
    dim = int(rng.integers(2, 6))
    ctx = 2 if conditional else None
    flows, config = [], []
    kinds = ["maa", "arqs", "crqs"] if conditional else \
        ["maa", "arqs", "crqs", "masked_affine", "coupling_block", "actnorm", "lu", "planar"] + \
        _NORMFLOWS_NEW
    for n_layer in range(int(rng.integers(1, 4))):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        if n_layer == 0 and first is not None:
            kind = first
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
        elif kind == "radial":
            flows.append(nf.flows.Radial((dim,)))
            config.append("radial")
        elif kind in ("coupling_sigmoid", "coupling_sigmoid_inv"):
            n_a = -(-dim // 2)
            scale_map = kind[len("coupling_"):]
            flows.append(nf.flows.AffineCouplingBlock(
                nf.nets.MLP([n_a, hidden, 2 * (dim - n_a)]), scale_map=scale_map))
            config.append(f"coupling_block({scale_map})")
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
        any(name in _NORMFLOWS_FORWARD_ONLY for name in config)


def _normflows_sampling_path(model, ours, z):
    """normflows' ``log q(T(z)) = log q0(z) - log|det dT/dz|`` at base draws ``z`` (the only
    points its Planar and Radial score) and the largest relative errors of refflow's log-probs
    at the samples and of its gradients of their mean, per layer parameter (refflow: the
    forward pass's pullback with ``log_det_bar = -1/n``; the base's parameters, whose gradient
    there is the base's alone, are not compared)."""
    import torch
    model.zero_grad()
    zt = torch.as_tensor(z)
    x, log_q = zt, model.q0.log_prob(zt)
    for flow in model.flows:
        x, ld = flow(x)
        log_q = log_q - ld
    log_q.mean().backward()
    lp_peer = log_q.detach().numpy()
    lp_ref = ours.log_prob(x.detach().numpy())
    lp_rel = float(np.max(np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)))
    _, _, pullback = ours.bijector.forward_vjp(z)
    _, grads = pullback(np.zeros_like(z), np.full(z.shape[0], -1.0 / z.shape[0]))
    worst = 0.0
    for name, p in model.named_parameters():
        if not name.startswith("flows."):
            continue
        key, idx = ours.peer_gradients[name]
        flat = np.asarray(grads[key[len("bijector."):]]).ravel()
        mine = np.where(idx >= 0, flat[np.maximum(idx, 0)], 0.0)
        peer = p.grad.numpy()
        norm = float(np.linalg.norm(peer))
        diff = float(np.linalg.norm(mine - peer))
        worst = max(worst, diff / norm if norm > 0 else diff)
    return lp_rel, worst


@register("normflows")
def check_normflows(seed, n_models):
    import torch

    from refflow.interop import compare, from_normflows
    for m in range(n_models):
        rng = np.random.default_rng([seed, m])
        torch.manual_seed(int(rng.integers(2 ** 31)))
        conditional = m % 3 == 2
        first = None if conditional else _NORMFLOWS_NEW[(m - m // 3) % len(_NORMFLOWS_NEW)]
        model, dim, config, planar = _normflows_model(rng, conditional, first)
        ctx = 2 if conditional else 0
        x, c = _data(rng, 256, dim, ctx)
        xt = torch.as_tensor(x)
        ct = None if c is None else torch.as_tensor(c)
        if planar:
            # normflows cannot invert its (tanh) Planar and Radial: trained by the reverse KL
            # to N(1, I) instead
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
            lp_rel, grad_rel = _normflows_sampling_path(model, ours, rng.normal(size=(64, dim)))
            yield config + " [samples; layer grads]", lp_rel, grad_rel
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
    if kind == "batchnorm":  # trained in training mode, imported in eval mode (below)
        momentum = float(rng.uniform(0.05, 0.5))
        return T.BatchNorm(dim, momentum=momentum), f"batchnorm(m{momentum:.2f})"
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
                ["iaf", "coupling", "spline", "spline_coupling", "spline_ar", "batchnorm"]
            transforms, config = [], []
            for _ in range(int(rng.integers(1, 4))):
                t, name = _pyro_transform(kinds[int(rng.integers(0, len(kinds)))], dim, rng,
                                          conditional)
                transforms += [t, T.Permute(torch.randperm(dim))]
                config.append(name)
            if m % 2 == 1:  # a BatchNorm (imported in eval mode) in every other model
                t, name = _pyro_transform("batchnorm", dim, rng, conditional)
                transforms.insert(0, t)
                config.insert(0, name)
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
            for t in transforms:  # Pyro's BatchNorm: imported in eval mode (running averages)
                if isinstance(t, T.BatchNorm):
                    t.eval()
            ours = from_pyro(dist)
            xe, ce = _data(np.random.default_rng([seed, m, 1]), 128, dim, ctx)
            report = compare(dist, ours, xe, ce)
            yield (f"D{dim}{',ctx2' if conditional else ''} " + "+".join(config),
                   report.max_log_prob_rel, report.max_grad_rel)
    finally:
        torch.set_default_dtype(old)


# ========================================================================= zuko
def _zuko_rows(n_models, seed):
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
        # every other model's masked networks are zuko's residual MaskedMLP (residual=True):
        # no extra draw, so the other options of each model stay as they were
        residual = m % 2 == 1
        if m % 5 == 4:  # zuko's NCSF: angles in [-pi, pi), a circular shift, a BoxUniform base
            rows.append(_zuko_ncsf_row(rng, dim, context, residual))
            continue
        if m % 5 == 3:  # zuko's own NAF / SOSPF builders: SoftclipTransform(11) between layers
            rows.append(_zuko_builder_row(rng, dim, context, residual))
            continue
        layers, names = [], []
        for j in range(int(rng.integers(1, 4))):
            if j and rng.random() < 0.5:  # as zuko's NAF / UNAF / SOSPF between their layers
                layers.append(zuko.flows.UnconditionalTransform(
                    zuko.transforms.SoftclipTransform, bound=11.0))
                names.append("softclip")
            order = torch.as_tensor(rng.permutation(dim))
            hidden = [int(h) for h in rng.integers(dim, 16, size=rng.integers(1, 3))]
            kind = str(rng.choice(["naf", "sos", "bpf", "bernstein", "affine", "spline"]))
            kw = dict(hidden_features=hidden, order=order, residual=residual)
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
            names.append(f"{kind} residual {hidden}" if residual else kind)
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


def _zuko_train_and_compare(flow, x, c):
    """A few Adam steps in float32 (zuko's default), then compare on 24 of the points."""
    import torch

    from refflow.interop import compare, from_zuko
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    xt = torch.as_tensor(x, dtype=torch.float32)
    ct = None if c is None else torch.as_tensor(c, dtype=torch.float32)
    for _ in range(5):
        opt.zero_grad()
        (-flow(ct).log_prob(xt).mean()).backward()
        opt.step()
    return compare(flow, from_zuko(flow), x[:24], None if c is None else c[:24])


def _zuko_builder_row(rng, dim, context, residual=False):
    """zuko's NAF or SOSPF with 2-3 transforms (a SoftclipTransform(11) between each two),
    with residual masked networks when ``residual``."""
    import zuko
    layers = int(rng.integers(2, 4))
    hidden = [int(h) for h in rng.integers(dim, 16, size=rng.integers(1, 3))]
    if rng.random() < 0.5:
        signal = int(rng.integers(1, 5))
        flow = zuko.flows.NAF(dim, context, transforms=layers, signal=signal,
                              network={"hidden_features": [int(rng.integers(2, 9))]},
                              hidden_features=hidden, residual=residual)
        name = f"NAF(transforms={layers}, signal={signal}, hidden={hidden}" \
            f"{', residual=True' if residual else ''})"
    else:
        degree, polys = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        flow = zuko.flows.SOSPF(dim, context, transforms=layers, degree=degree,
                                polynomials=polys, hidden_features=hidden, residual=residual)
        name = f"SOSPF(transforms={layers}, degree={degree}, polynomials={polys}, " \
            f"hidden={hidden}{', residual=True' if residual else ''})"
    x = 1.5 * rng.standard_normal((64, dim))
    c = rng.standard_normal((64, context)) if context else None
    report = _zuko_train_and_compare(flow, x, c)
    return f"D={dim} C={context} {name}", report.max_log_prob_rel, report.max_grad_rel


def _zuko_ncsf_row(rng, dim, context, residual=False):
    """One zuko NCSF (random bins, layers, widths; residual masked networks when
    ``residual``), trained for a few Adam steps on angles."""
    import zuko
    bins, layers = int(rng.integers(3, 9)), int(rng.integers(1, 4))
    hidden = [int(h) for h in rng.integers(dim, 16, size=rng.integers(1, 3))]
    flow = zuko.flows.NCSF(dim, context, bins=bins, transforms=layers, hidden_features=hidden,
                           residual=residual)
    x = rng.uniform(-np.pi, np.pi, size=(64, dim))
    c = rng.standard_normal((64, context)) if context else None
    report = _zuko_train_and_compare(flow, x, c)
    config = f"D={dim} C={context} NCSF(bins={bins}, transforms={layers}, hidden={hidden}" \
        f"{', residual=True' if residual else ''})"
    return config, report.max_log_prob_rel, report.max_grad_rel


# ====================================================================== flowjax
def _flowjax_rows(n_models, seed):
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    jax.config.update("jax_enable_x64", True)  # FlowJAX builds and trains in float64
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal, StandardNormal, StudentT, Uniform
    from flowjax.flows import (block_neural_autoregressive_flow, coupling_flow,
                               masked_autoregressive_flow, planar_flow, triangular_spline_flow)
    from flowjax.train import fit_to_data

    from refflow.interop import compare, from_flowjax
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models):
        dim = int(rng.integers(2, 5))
        cond = None if rng.random() < 0.5 else int(rng.integers(1, 3))
        kind = str(rng.choice(["maf", "coupling", "bnaf", "planar", "triangular_spline"]))
        if kind in ("planar", "triangular_spline"):
            cond = None  # their conditional forms have no refflow twin (refused)
        tr_kind = str(rng.choice(["rqs", "default"])) if kind in ("maf", "coupling") else ""
        base_kind = str(rng.choice(["standard", "normal", "studentt", "uniform"]))
        base = {"standard": StandardNormal((dim,)),
                "normal": Normal(jnp.full(dim, 0.3), jnp.full(dim, 1.4)),
                "studentt": StudentT(jnp.full(dim, 5.0)),
                "uniform": Uniform(jnp.full(dim, -40.0), jnp.full(dim, 40.0))}[base_kind]
        # a non-inverted BNAF's log_prob is FlowJAX's bisection (tolerance ~1e-5), a tanh
        # planar layer has no inverse in FlowJAX: inverted only
        invert = True if kind in ("bnaf", "planar") else bool(rng.random() < 0.7)
        kw = dict(base_dist=base, cond_dim=cond, flow_layers=int(rng.integers(1, 4)),
                  invert=invert)
        if kind == "bnaf":
            kw.update(nn_depth=int(rng.integers(1, 3)), nn_block_dim=int(rng.integers(2, 5)))
            dist = block_neural_autoregressive_flow(jr.key(seed + m), **kw)
        elif kind == "planar":
            dist = planar_flow(jr.key(seed + m), **kw)
        elif kind == "triangular_spline":
            kw.update(knots=int(rng.integers(3, 9)), tanh_max_val=float(rng.uniform(1.5, 4.0)))
            dist = triangular_spline_flow(jr.key(seed + m), **kw)
            tr_kind = f"knots={kw['knots']} tanh_max_val={kw['tanh_max_val']:.2f}"
        else:
            kw["nn_width"] = int(rng.integers(4, 12))
            if tr_kind == "rqs":
                kw["transformer"] = RationalQuadraticSpline(
                    knots=int(rng.integers(3, 7)),
                    interval=[2.0, 3.0, (-1.5, 2.5)][int(rng.integers(3))])
            build = masked_autoregressive_flow if kind == "maf" else coupling_flow
            dist = build(jr.key(seed + m), **kw)
        x = 1.5 * rng.standard_normal((64, dim))
        c = None if cond is None else rng.standard_normal((64, cond))
        # brief training: a few epochs of FlowJAX's own maximum-likelihood loop
        dist, _ = fit_to_data(jr.key(m), dist, data=(x,) if c is None else (x, c),
                              max_epochs=3, batch_size=32, learning_rate=1e-2,
                              return_best=False, show_progress=False)
        report = compare(dist, from_flowjax(dist), x[:24], None if c is None else c[:24])
        if tr_kind == "rqs":
            tr_kind = f"rqs(knots={kw['transformer'].knots}, {kw['transformer'].interval})"
        elif kind == "bnaf":
            tr_kind = f"depth={kw['nn_depth']} block={kw['nn_block_dim']}"
        config = (f"{kind} {tr_kind} D={dim} C={cond or 0} layers={kw['flow_layers']} "
                  f"invert={invert} base={base_kind} ({len(report.grad_rel)} leaves)")
        rows.append((config, report.max_log_prob_rel, report.max_grad_rel))
    return rows


@register("zuko")
def check_zuko(seed, n_models):
    yield from _zuko_rows(n_models, seed)


@register("flowjax")
def check_flowjax(seed, n_models):
    yield from _flowjax_rows(n_models, seed)


# ====================================================================== distrax and TFP
def _jax_grad_rows(make, theta, frozen, x, importer, rng):
    """``(max lp rel, grad rel)`` of a JAX-peer model ``make(theta)`` at ``x``: log-probs, and
    ``jax.grad`` of the mean log-prob along three random directions of every array of
    ``theta`` whose import is a copy or a selection (``frozen(i, key)`` False), against
    refflow's gradient dotted with ``import(theta + delta) - import(theta)`` (exact for such
    maps)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    dist = make(theta)
    model = importer(dist)
    lp_peer = np.asarray(jax.vmap(dist.log_prob)(jnp.asarray(x)))
    lp_err = float(np.max(np.abs(model.log_prob(x) - lp_peer) / np.maximum(np.abs(lp_peer),
                                                                            1.0)))

    params, static = eqx.partition(theta, eqx.is_inexact_array)  # MLPs hold functions too

    def mean_lp(p):
        return jnp.mean(jax.vmap(make(eqx.combine(p, static)).log_prob)(jnp.asarray(x)))

    grads = jax.grad(mean_lp)(params)
    _, ref = model.nll_and_grad(x)
    g_err, n_moved = 0.0, 0
    for _ in range(3):
        peer, moved = 0.0, []
        for i, (t, g) in enumerate(zip(params, grads)):
            moved.append(dict(t))
            for k in t:
                if frozen(i, k):
                    continue
                leaves, tree = jax.tree_util.tree_flatten(t[k])
                g_leaves = jax.tree_util.tree_leaves(g[k])
                delta = [rng.normal(size=np.shape(leaf)) for leaf in leaves]
                n_moved += len(leaves)
                peer += sum(float(np.sum(np.asarray(a) * d)) for a, d in zip(g_leaves, delta))
                moved[i][k] = jax.tree_util.tree_unflatten(
                    tree, [jnp.asarray(np.asarray(leaf) + d) for leaf, d in zip(leaves, delta)])
        after = importer(make(eqx.combine(moved, static))).params
        mine = sum(float(np.sum(-ref[k] * (after[k] - model.params[k]))) for k in ref)
        g_err = max(g_err, abs(mine - peer) / max(abs(peer), 1.0))
    # nothing to move (every array imported through a log): no gradient compared
    return lp_err, (g_err if n_moved else float("nan"))


def _jax_train(make, theta, frozen_layers, x, steps=5, lr=1e-2):
    """A few Adam steps (optax) on the model's own mean negative log-likelihood at ``x``;
    layers in ``frozen_layers`` keep their values."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    params, static = eqx.partition(theta, eqx.is_inexact_array)

    def loss(p):
        full = eqx.combine(p, static)
        full = [theta[i] if i in frozen_layers else t for i, t in enumerate(full)]
        return -jnp.mean(jax.vmap(make(full).log_prob)(jnp.asarray(x)))

    opt = optax.adam(lr)
    state = opt.init(params)
    for _ in range(steps):
        updates, state = opt.update(jax.grad(loss)(params), state)
        params = optax.apply_updates(params, updates)
    full = eqx.combine(params, static)
    return [theta[i] if i in frozen_layers else t for i, t in enumerate(full)]


def _distrax_rows(n_models, seed):
    import distrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    jax.config.update("jax_enable_x64", True)

    from refflow.interop import from_distrax
    acts = {"relu": jax.nn.relu, "tanh": jnp.tanh, "elu": jax.nn.elu}
    rng = np.random.default_rng(seed)
    for m in range(n_models):
        dim = int(rng.integers(2, 6))
        kinds = ["coupling_rqs", "coupling_affine", "lu", "triangular", "unconstrained",
                 "affine", "shift"]
        # every other model has a spline coupling; a bounded-image layer goes last (data
        # side): its domain does not move while training
        spec = [{"kind": "coupling_rqs"}] if m % 2 == 0 else []
        spec += [{"kind": str(rng.choice(kinds))} for _ in range(int(rng.integers(1, 4)))]
        spec += [{"kind": "tanh"}] if rng.random() < 0.3 else []
        theta = []
        for i, s in enumerate(spec):
            k = s["kind"]
            if k.startswith("coupling"):
                s["mask"] = rng.permutation(np.arange(dim) < max(1, dim // 2))
                s["act"] = str(rng.choice(list(acts)))
                n_par = 2
                if k == "coupling_rqs":
                    lo = float(rng.choice([-2.0, -3.0]))
                    s.update(bins=int(rng.integers(2, 7)),
                             range=(lo, -lo if rng.random() < 0.5 else lo + 5.0),
                             boundary=str(rng.choice(["unconstrained", "lower_identity",
                                                      "upper_identity", "identity",
                                                      "circular"])),
                             min_bin=float(rng.choice([1e-4, 1e-3])),
                             min_slope=float(rng.choice([1e-4, 1e-3])))
                    n_par = 3 * s["bins"] + 1
                theta.append({"mlp": eqx.nn.MLP(dim, dim * n_par, int(rng.integers(4, 12)),
                                                int(rng.integers(1, 3)), acts[s["act"]],
                                                key=jr.key(int(rng.integers(2 ** 31))))})
            elif k in ("lu", "unconstrained"):
                theta.append({"matrix": jnp.asarray(np.eye(dim) + 0.4 * rng.normal(
                    size=(dim, dim))), "bias": jnp.asarray(0.3 * rng.normal(size=dim))})
            elif k == "triangular":
                a = 0.4 * rng.normal(size=(dim, dim))
                a[np.diag_indices(dim)] = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.6, 1.5,
                                                                                     dim)
                s["lower"] = bool(rng.integers(0, 2))
                theta.append({"matrix": jnp.asarray(a)})
            elif k == "affine":
                theta.append({"shift": jnp.asarray(0.3 * rng.normal(size=dim)),
                              "log_scale": jnp.asarray(0.3 * rng.normal(size=dim))})
            elif k == "shift":
                theta.append({"shift": jnp.asarray(0.3 * rng.normal(size=dim))})
            else:
                theta.append({})
        mvn = bool(rng.integers(0, 2))

        def layer(s, t):
            k = s["kind"]
            if k == "coupling_rqs":
                K, (lo, hi) = s["bins"], s["range"]
                fn = (lambda p, K=K, lo=lo, hi=hi, s=s: distrax.RationalQuadraticSpline(
                    p.reshape(dim, 3 * K + 1), lo, hi, boundary_slopes=s["boundary"],
                    min_bin_size=s["min_bin"], min_knot_slope=s["min_slope"]))
                return distrax.MaskedCoupling(jnp.asarray(s["mask"]), t["mlp"], fn)
            if k == "coupling_affine":
                return distrax.MaskedCoupling(
                    jnp.asarray(s["mask"]), t["mlp"],
                    lambda p: distrax.ScalarAffine(shift=p[:dim], log_scale=p[dim:]))
            if k == "lu":
                return distrax.LowerUpperTriangularAffine(t["matrix"], t["bias"])
            if k == "unconstrained":
                return distrax.UnconstrainedAffine(t["matrix"], t["bias"])
            if k == "triangular":
                return distrax.TriangularLinear(t["matrix"], is_lower=s["lower"])
            if k == "affine":
                return distrax.Block(distrax.ScalarAffine(t["shift"],
                                                          log_scale=t["log_scale"]), 1)
            if k == "shift":
                return distrax.Block(distrax.Shift(t["shift"]), 1)
            return distrax.Block(distrax.Tanh(), 1)

        def make(th, spec=spec, mvn=mvn, layer=layer):
            loc, scale = jnp.linspace(-0.3, 0.3, dim), jnp.linspace(0.8, 1.3, dim)
            base = distrax.MultivariateNormalDiag(loc, scale) if mvn else \
                distrax.Independent(distrax.Normal(loc, scale), 1)
            return distrax.Transformed(base, distrax.Chain(
                [layer(s, t) for s, t in zip(spec, th)][::-1]))

        z = rng.normal(size=(64, dim))
        x = np.asarray(jax.vmap(make(theta).bijector.forward)(jnp.asarray(z)))
        theta = _jax_train(make, theta, set(), x)
        z = rng.normal(size=(24, dim))
        x = np.asarray(jax.vmap(make(theta).bijector.forward)(jnp.asarray(z)))
        frozen = lambda i, k, spec=spec: spec[i]["kind"] == "unconstrained" \
            and k == "matrix"  # noqa: E731 - its LU import is not linear in A
        lp_err, g_err = _jax_grad_rows(make, theta, frozen, x, from_distrax, rng)
        names = [s["kind"] + (f"(K{s['bins']},{s['range']},{s['boundary']})"
                              if s["kind"] == "coupling_rqs" else "") for s in spec]
        yield (f"D={dim} base={'mvn' if mvn else 'independent'} [{', '.join(names)}]",
               lp_err, g_err)


def _tfp_rows(n_models, seed):
    import jax
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp
    jax.config.update("jax_enable_x64", True)

    from refflow.interop import from_tfp
    tfb, tfd = tfp.bijectors, tfp.distributions
    rng = np.random.default_rng(seed)
    for m in range(n_models):
        dim = int(rng.integers(2, 6))
        last = str(rng.choice(["exp", "softplus", "sigmoid", "tanh", "none"]))
        kinds = ["shift", "scale", "diag", "tril", "inv_tril", "lu", "permute"]
        # a bounded-image layer last (data side): its domain does not move while training
        spec = [{"kind": str(rng.choice(kinds))} for _ in range(int(rng.integers(1, 5)))] + \
            ([] if last == "none" else [{"kind": last}])
        theta = []
        for s in spec:
            k = s["kind"]
            if k in ("lu", "permute"):
                s["perm"] = rng.permutation(dim)
            if k == "shift":
                theta.append({"shift": jnp.asarray(0.3 * rng.normal(size=dim))})
            elif k == "scale":
                theta.append({"log_scale": jnp.asarray(0.3 * rng.normal(size=dim))})
            elif k == "diag":
                theta.append({"scale": jnp.asarray(rng.uniform(0.5, 1.5, dim))})
            elif k in ("tril", "inv_tril", "lu"):
                a = 0.4 * rng.normal(size=(dim, dim))
                a[np.diag_indices(dim)] = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.6, 1.5,
                                                                                     dim)
                theta.append({"matrix": jnp.asarray(a)})
            else:
                theta.append({})
        mvn = bool(rng.integers(0, 2))

        def layer(s, t):
            k = s["kind"]
            if k == "shift":
                return tfb.Shift(t["shift"])
            if k == "scale":
                return tfb.Scale(log_scale=t["log_scale"])
            if k == "diag":
                return tfb.ScaleMatvecDiag(t["scale"])
            if k == "tril":
                return tfb.ScaleMatvecTriL(t["matrix"])
            if k == "inv_tril":
                return tfb.Invert(tfb.ScaleMatvecTriL(t["matrix"]))
            if k == "lu":
                return tfb.ScaleMatvecLU(t["matrix"], jnp.asarray(s["perm"]))
            if k == "permute":
                return tfb.Permute(jnp.asarray(s["perm"]))
            return {"exp": tfb.Exp, "softplus": tfb.Softplus, "sigmoid": tfb.Sigmoid,
                    "tanh": tfb.Tanh}[k]()

        def make(th, spec=spec, mvn=mvn, layer=layer):
            loc, scale = jnp.linspace(-0.3, 0.3, dim), jnp.linspace(0.8, 1.3, dim)
            base = tfd.MultivariateNormalDiag(loc, scale) if mvn else \
                tfd.Independent(tfd.Normal(loc, scale), 1)
            return tfd.TransformedDistribution(base, tfb.Chain(
                [layer(s, t) for s, t in zip(spec, th)][::-1]))

        diag_layers = {i for i, s in enumerate(spec) if s["kind"] == "diag"}
        z = rng.normal(size=(64, dim))
        x = np.asarray(make(theta).bijector.forward(jnp.asarray(z)))
        theta = _jax_train(make, theta, diag_layers, x)
        z = rng.normal(size=(24, dim))
        x = np.asarray(make(theta).bijector.forward(jnp.asarray(z)))
        frozen = lambda i, k, d=diag_layers: i in d  # noqa: E731 - imported through a log
        lp_err, g_err = _jax_grad_rows(make, theta, frozen, x, from_tfp, rng)
        yield (f"D={dim} base={'mvn' if mvn else 'independent'} "
               f"[{', '.join(s['kind'] for s in spec)}]", lp_err, g_err)


@register("distrax")
def check_distrax(seed, n_models):
    yield from _distrax_rows(n_models, seed)


@register("tfp")
def check_tfp(seed, n_models):
    yield from _tfp_rows(n_models, seed)


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
