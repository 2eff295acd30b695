"""Peers' transforms wrapped for the oracle: the builders behind the audit's recipes.

Every builder takes a seed and returns the keyword arguments of
``refflow.testing.check_layer`` (``forward``, ``inverse``, ``z``, the functional pullbacks and
``params``, plus any option the layer needs, each with its reason). Parameters are drawn at
random (``normal(0, scale)``, seeded) so that no layer is checked at its identity
initialisation. torch modules are float64; JAX runs with ``jax_enable_x64``.

Directions are the peers' own: ``forward`` is whatever the peer calls its forward map (data to
base for zuko and nflows, base to data for normflows, Pyro, FlowJAX and distrax); the oracle
only needs the two maps to be inverse to each other.

Precision: builders run in float64 unless :func:`precision` says ``"float32"``; then the torch
helpers check a float32 copy of the module against its float64 twin (``reference=``), and the
JAX helpers run the function on float32 parameters and points (FlowJAX's bijection cast whole)
against the float64 function.
"""

import contextlib
import copy

import numpy as np

from refflow.testing import from_jax, from_torch


# ----------------------------------------------------------------------------------- helpers
#: Points per check: not equal to the dimension, so that a ``(dim,)`` log-det (one value per
#: coordinate) is never mistaken for one value per point.
N_POINTS = 4
#: Context features of the conditional recipes (variant ``"context=2"``).
CONTEXT = 2


def context_vector(seed, k):
    """The fixed random context of a conditional case: ``k`` standard normal values (seeded),
    shared by every point of the case. The checks hold it fixed and differentiate with respect
    to the input and the parameters; it is one vector, not one per point, because the oracle
    also evaluates the layer on subsets of the points (the finite-difference sweeps of the rows
    that disagree), where a per-point context could not follow its rows."""
    return np.random.default_rng([int(seed), 7919]).standard_normal(int(k))


def torch_context(c, x):
    """``c`` as a tensor of ``x``'s dtype, broadcast to one row per point of ``x``."""
    import torch
    c = torch.as_tensor(np.asarray(c), dtype=x.dtype)
    return c.expand(*x.shape[:-1], c.shape[-1])


_PRECISION = ["float64"]


@contextlib.contextmanager
def precision(dtype):
    """Builders called inside this context build ``dtype`` (``"float64"`` or ``"float32"``)
    layers; float32 ones carry their float64 twin as ``reference``."""
    if dtype not in ("float64", "float32"):
        raise ValueError(f"precision: dtype must be 'float64' or 'float32', got {dtype!r}")
    _PRECISION.append(dtype)
    try:
        yield
    finally:
        _PRECISION.pop()


def current_precision():
    """``"float64"`` or ``"float32"``: what the builders build now."""
    return _PRECISION[-1]


def normal_points(seed, n, dim, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal((n, dim))


def _points(seed, dim, scale, z):
    """``z(seed, dim)`` when given (boundary points), else seeded normal points."""
    return normal_points(seed, N_POINTS, dim, scale) if z is None else z(seed, dim)


def randomize_torch(module, seed, scale=0.5):
    """float64 copy of every parameter drawn from ``normal(0, scale)`` (seeded)."""
    import torch

    module = module.double()
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module


def torch_layer(module, forward, inverse, z, **options):
    """check_layer arguments for a torch module and two calls on it (in float32, a float32
    copy of the module checked against the float64 one)."""
    fwd = from_torch(module, forward)
    inv = None if inverse is None else from_torch(module, inverse)
    out = dict(forward=fwd, inverse=inv, z=z, forward_vjp=fwd.vjp,
               inverse_vjp=None if inv is None else inv.vjp, params=fwd.params,
               functional=True, **options)
    if current_precision() == "float32":
        low = copy.deepcopy(module).float()
        fwd32 = from_torch(low, forward)
        inv32 = None if inverse is None else from_torch(low, inverse)
        out.update(forward=fwd32, inverse=inv32, z=np.asarray(z, dtype=np.float32),
                   forward_vjp=fwd32.vjp, inverse_vjp=None if inv32 is None else inv32.vjp,
                   reference=_twin(fwd, inv))
    return out


def _twin(fwd, inv):
    twin = {"forward": fwd, "forward_vjp": fwd.vjp}
    if inv is not None:
        twin.update(inverse=inv, inverse_vjp=inv.vjp)
    return twin


def _float32_call(f):
    """``f(params, *inputs)`` on float32 parameters and inputs."""
    def call(p, *xs):
        import jax.numpy as jnp
        return f({k: jnp.asarray(v, dtype=jnp.float32) for k, v in p.items()},
                 *[jnp.asarray(x, dtype=jnp.float32) for x in xs])
    return call


def enable_x64():
    """JAX in float64 (finite differences in float32 are meaningless); a process-wide switch."""
    import jax
    jax.config.update("jax_enable_x64", True)


def _eager(fn):
    """``fn`` (a wrapped function or vjp) called with JAX's ``jit`` disabled, and so is the
    pullback a vjp returns: for code that derives shapes from the parameters' values, which a
    traced parameter does not have."""
    def call(*args):
        import jax
        with jax.disable_jit():
            out = fn(*args)
        if isinstance(out, tuple) and out and callable(out[-1]):
            pull = out[-1]

            def pullback(*cotangents):
                with jax.disable_jit():
                    return pull(*cotangents)
            return (*out[:-1], pullback)
        return out
    return call


def _maybe_eager(wrapped, eager):
    """``(callable, vjp)`` of a :func:`from_jax` wrapper, run eagerly when ``eager``."""
    if wrapped is None:
        return None, None
    if not eager:
        return wrapped, wrapped.vjp
    return _eager(wrapped), _eager(wrapped.vjp)


def jax_layer(f_forward, f_inverse, params, z, eager=False, **options):
    """check_layer arguments for two JAX functions ``f(params, x) -> (y, log_det)``;
    ``eager=True`` runs them without ``jit`` (TFP bijectors that compute shapes from parameter
    values)."""
    fwd = from_jax(f_forward, params)
    inv = None if f_inverse is None else from_jax(f_inverse, params)
    fwd_c, fwd_vjp = _maybe_eager(fwd, eager)
    inv_c, inv_vjp = _maybe_eager(inv, eager)
    out = dict(forward=fwd_c, inverse=inv_c, z=z, forward_vjp=fwd_vjp, inverse_vjp=inv_vjp,
               params=fwd.params, functional=True, **options)
    if current_precision() == "float32":
        fwd32 = from_jax(_float32_call(f_forward), params)
        inv32 = None if f_inverse is None else from_jax(_float32_call(f_inverse), params)
        f32_c, f32_vjp = _maybe_eager(fwd32, eager)
        i32_c, i32_vjp = _maybe_eager(inv32, eager)
        twin = {"forward": fwd_c, "forward_vjp": fwd_vjp}
        if inv is not None:
            twin.update(inverse=inv_c, inverse_vjp=inv_vjp)
        out.update(forward=f32_c, inverse=i32_c, z=np.asarray(z, dtype=np.float32),
                   forward_vjp=f32_vjp, inverse_vjp=i32_vjp, reference=twin)
    return out


def zuko_calls():
    return (lambda m, x: m.transform().call_and_ladj(x),
            lambda m, y: m.transform().inv.call_and_ladj(y))


def nflows_calls():
    return (lambda m, x: m(x), lambda m, y: m.inverse(y))


def pyro_calls():
    def forward(m, x):
        y = m(x)
        return y, m.log_abs_det_jacobian(x, y)

    def inverse(m, y):
        x = m.inv(y)
        return x, -m.log_abs_det_jacobian(x, y)

    return forward, inverse


def pyro_forward_only():
    return pyro_calls()[0]


# ------------------------------------------------------------------------------------ zuko
def zuko_flow(cls, dim=3, scale=0.5, points=1.0, z=None, context=None, **kwargs):
    """A zuko flow's transform; ``context=k``: built with ``context=k`` and called on a fixed
    random context (:func:`context_vector`)."""
    def build(seed):
        import torch
        import zuko

        torch.manual_seed(seed)
        extra = {} if context is None else {"context": context}
        flow = randomize_torch(getattr(zuko.flows, cls)(dim, **extra, **kwargs), seed, scale)
        if context is None:
            fwd, inv = zuko_calls()
        else:
            c = context_vector(seed, context)
            fwd = lambda m, x: m.transform(torch_context(c, x)).call_and_ladj(x)
            inv = lambda m, y: m.transform(torch_context(c, y)).inv.call_and_ladj(y)
        return torch_layer(flow, fwd, inv, _points(seed, dim, points, z))
    return build


def zuko_module(make, dim, scale=0.5, z=None, **options):
    """A zuko transform built from parameters held by a small module."""
    def build(seed):
        import torch

        class Holder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.make = make
                self.p = torch.nn.ParameterDict(make.shapes(dim))

            def transform(self):
                return self.make(dim, **{k: v for k, v in self.p.items()})

        holder = randomize_torch(Holder(), seed, scale)
        fwd = lambda m, x: m.transform().call_and_ladj(x)
        inv = lambda m, y: m.transform().inv.call_and_ladj(y)
        points = _points(seed, dim, 1.0, z)
        return torch_layer(holder, fwd, inv, points, **options)
    return build


class _ZukoTransform:
    """``make(dim, **params) -> zuko transform`` with ``shapes(dim) -> {name: Parameter}``."""

    def __init__(self, fn, shapes):
        self.fn, self.shape_fn = fn, shapes

    def __call__(self, dim, **params):
        return self.fn(dim, **params)

    def shapes(self, dim):
        import torch
        return {k: torch.nn.Parameter(torch.zeros(s, dtype=torch.float64))
                for k, s in self.shape_fn(dim).items()}


def _zt():
    import zuko
    return zuko.transforms


ZUKO_RQS = _ZukoTransform(
    lambda d, w, h, s: _zt().MonotonicRQSTransform(w, h, s, bound=3.0),
    lambda d: {"w": (d, 5), "h": (d, 5), "s": (d, 4)})
ZUKO_BERNSTEIN = _ZukoTransform(
    lambda d, theta: _zt().BoundedBernsteinTransform(theta, bound=5.0),
    lambda d: {"theta": (d, 11)})
ZUKO_AFFINE = _ZukoTransform(
    lambda d, shift, scale: _zt().MonotonicAffineTransform(shift, scale),
    lambda d: {"shift": (d,), "scale": (d,)})
ZUKO_LU = _ZukoTransform(
    lambda d, lu: _zt().LULinearTransform(lu),
    lambda d: {"lu": (d, d)})
ZUKO_ROTATION = _ZukoTransform(
    lambda d, a: _zt().RotationTransform(a),
    lambda d: {"a": (d, d)})
ZUKO_SOS = _ZukoTransform(
    lambda d, a: _zt().SOSPolynomialTransform(a, bound=5.0),
    lambda d: {"a": (d, 3, 4)})
ZUKO_GAUSSIANIZATION = _ZukoTransform(
    lambda d, shift, scale: _zt().GaussianizationTransform(shift, scale),
    lambda d: {"shift": (d, 4), "scale": (d, 4)})
ZUKO_SIGNED_POWER = _ZukoTransform(
    lambda d, alpha: _zt().SignedPowerTransform(alpha),
    lambda d: {"alpha": (d,)})


# ----------------------------------------------------------------------------------- nflows
def nflows_transform(make, dim=3, scale=0.3, points=1.0, eval_mode=False, z=None, post=None,
                     context=None, **options):
    """An nflows transform ``make(dim)``; ``context=k``: ``make`` builds it with
    ``context_features=k`` and it is called with a fixed random context."""
    def build(seed):
        import torch

        torch.manual_seed(seed)
        module = randomize_torch(make(dim), seed, scale)
        if eval_mode:
            module.eval()
        if post is not None:
            post(module)
        if context is None:
            fwd, inv = nflows_calls()
        else:
            c = context_vector(seed, context)
            fwd = lambda m, x: m(x, context=torch_context(c, x))
            inv = lambda m, y: m.inverse(y, context=torch_context(c, y))
        return torch_layer(module, fwd, inv, _points(seed, dim, points, z), **options)
    return build


def nflows_net(in_features, out_features):
    from nflows.nn.nets import ResidualNet
    return ResidualNet(in_features, out_features, hidden_features=8, num_blocks=1)


def nflows_batchnorm(dim):
    import torch
    from nflows.transforms import BatchNorm

    layer = BatchNorm(dim).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.linspace(-0.5, 0.5, dim, dtype=torch.float64))
        layer.running_var.copy_(torch.linspace(0.5, 2.0, dim, dtype=torch.float64))
    return layer


# -------------------------------------------------------------------------------- normflows
def normflows_flow(make, dim=3, scale=0.4, points=1.0, forward_only=False, post=None, z=None,
                   context=None, **options):
    """A normflows flow ``make(dim)``; ``context=k``: ``make`` builds it with ``k`` context
    channels and it is called with a fixed random context."""
    def build(seed):
        import torch

        torch.manual_seed(seed)
        module = randomize_torch(make(dim), seed, scale)
        if post is not None:
            post(module)
        if context is None:
            fwd = lambda m, z: m.forward(z)
            inv = None if forward_only else (lambda m, x: m.inverse(x))
        else:
            c = context_vector(seed, context)
            fwd = lambda m, z: m.forward(z, torch_context(c, z))
            inv = None if forward_only else (lambda m, x: m.inverse(x, torch_context(c, x)))
        return torch_layer(module, fwd, inv, _points(seed, dim, points, z), **options)
    return build


# ------------------------------------------------------------------------------------- Pyro
def pyro_transform(make, dim=3, scale=0.3, points=1.0, forward_only=False, post=None, z=None,
                   context=None, **options):
    """A Pyro transform module ``make(dim)``; ``context=k``: a ``Conditional*`` module built
    for ``k`` context features, conditioned (``.condition(c)``) on a fixed random context ``c``
    of shape ``(k,)`` inside every call (so the graph runs through its network)."""
    def build(seed):
        import torch

        torch.manual_seed(seed)
        module = randomize_torch(make(dim), seed, scale)
        if post is not None:
            post(module)
        fwd, inv = pyro_calls()
        if context is not None:
            c = context_vector(seed, context)
            cond = lambda m, v: m.condition(torch.as_tensor(c, dtype=v.dtype))
            fwd = (lambda f: lambda m, x: f(cond(m, x), x))(fwd)
            inv = (lambda f: lambda m, y: f(cond(m, y), y))(inv)
        pts = _points(seed, dim, points, z)
        return torch_layer(module, fwd, None if forward_only else inv, pts, **options)
    return build


def arn(dim, param_dims=None):
    from pyro.nn import AutoRegressiveNN
    if param_dims is None:
        return AutoRegressiveNN(dim, [8])
    return AutoRegressiveNN(dim, [8], param_dims=param_dims)


def pyro_batchnorm(dim):
    import torch
    from pyro.distributions.transforms import BatchNorm

    layer = BatchNorm(dim).double()
    with torch.no_grad():
        layer.moving_mean.copy_(torch.linspace(-0.5, 0.5, dim, dtype=torch.float64))
        layer.moving_variance.copy_(torch.linspace(0.5, 2.0, dim, dtype=torch.float64))
    return layer.eval()


def pyro_batchnorm_gamma(layer):
    """gamma = 1 + N(0, 0.1): Pyro constrains it by relu(gamma) + 1e-6, so a negative draw would
    make a degenerate layer (scale 1e6) rather than a random healthy one."""
    import torch
    with torch.no_grad():
        layer.gamma.copy_(1.0 + 0.1 * torch.randn(layer.gamma.shape, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------------------------- FlowJAX
def flowjax_bijection(make, dim=3, scale=0.3, points=1.0, forward_only=False, noise_seed=1,
                      z=None, context=None, **options):
    """A FlowJAX bijection on single points, vmapped over rows; trainable leaves as params
    (in float32, every floating array of the rebuilt bijection cast to float32).
    ``context=k``: ``make(key, dim)`` builds it with ``cond_dim=k`` and every point is
    transformed with the same fixed random condition."""
    def build(seed):
        enable_x64()
        import equinox as eqx
        import jax
        import paramax

        bij = make(jax.random.key(seed), dim)
        is_leaf = lambda leaf: isinstance(leaf, paramax.NonTrainable)
        trainable, static = eqx.partition(bij, eqx.is_inexact_array, is_leaf=is_leaf)
        flat, treedef = jax.tree_util.tree_flatten_with_path(trainable)
        names = [jax.tree_util.keystr(path) for path, _ in flat]
        rng = np.random.default_rng(seed + noise_seed)
        params = {n: np.asarray(leaf, dtype=np.float64) + scale * rng.standard_normal(np.shape(leaf))
                  for n, (_, leaf) in zip(names, flat)}

        def rebuild(p):
            leaves = [p[n] for n in names]
            bij = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
            if leaves and leaves[0].dtype == np.float32:
                bij = jax.tree_util.tree_map(
                    lambda a: a.astype(np.float32) if eqx.is_inexact_array(a) else a, bij)
            return bij

        c = None if context is None else context_vector(seed, context)

        def call(method, v):
            if c is None:
                return jax.vmap(method)(v)
            cond = jax.numpy.asarray(c, dtype=v.dtype)
            return jax.vmap(lambda row: method(row, cond))(v)

        def forward(p, x):
            return call(rebuild(p).transform_and_log_det, x)

        def inverse(p, y):
            return call(rebuild(p).inverse_and_log_det, y)

        return jax_layer(forward, None if forward_only else inverse, params,
                         _points(seed, dim, points, z), **options)
    return build


# ---------------------------------------------------------------------------------- distrax
def distrax_bijector(make, shapes, dim=3, scale=0.3, points=1.0, z=None, **options):
    """``make(params) -> distrax bijector`` on batches; ``shapes(dim) -> {name: shape}``."""
    def build(seed):
        enable_x64()
        rng = np.random.default_rng(seed)
        params = {k: scale * rng.standard_normal(s) for k, s in shapes(dim).items()}

        def forward(p, x):
            return make(p, dim).forward_and_log_det(x)

        def inverse(p, y):
            return make(p, dim).inverse_and_log_det(y)

        return jax_layer(forward, inverse, params, _points(seed, dim, points, z), **options)
    return build


class TorchTransform:
    """A parameter-free ``torch.distributions`` transform as a module (for ``from_torch``)."""

    def __new__(cls, transform):
        import torch

        class Holder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.t = transform

            def forward(self, x):
                y = self.t(x)
                return y, self.t.log_abs_det_jacobian(x, y)

            def inverse(self, y):
                x = self.t.inv(y)
                return x, -self.t.log_abs_det_jacobian(x, y)

        return Holder()


def plain_transform(make, dim=3, points=1.0, z=None, **options):
    """A transform without parameters (torch.distributions style): ``make() -> module``."""
    def build(seed):
        module = make().double()
        pts = _points(seed, dim, points, z)
        return torch_layer(module, lambda m, x: m.forward(x), lambda m, y: m.inverse(y), pts,
                           **options)
    return build


def normflows_spline_list_tails(dim=2, bins=4):
    """normflows' ``unconstrained_rational_quadratic_spline`` with ``tails=["linear", ...]``
    (one entry per feature), parameters held by a module; points inside and outside [-3, 3]."""
    def build(seed):
        import torch
        from normflows.utils.splines import unconstrained_rational_quadratic_spline as spline

        class Spline(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(dim, bins))
                self.h = torch.nn.Parameter(torch.zeros(dim, bins))
                self.d = torch.nn.Parameter(torch.zeros(dim, bins + 1))

            def run(self, v, inverse):
                n = len(v)
                return spline(v, self.w.expand(n, dim, bins), self.h.expand(n, dim, bins),
                              self.d.expand(n, dim, bins + 1), inverse=inverse,
                              tails=["linear"] * dim, tail_bound=3.0)

        module = randomize_torch(Spline(), seed, 0.5)
        z = normal_points(seed, N_POINTS, dim)
        z[0, 0] = 5.0                                   # outside the bound
        return torch_layer(module, lambda m, x: m.run(x, False), lambda m, y: m.run(y, True), z,
                           sum_log_det=True)
    return build


def normflows_planar_overflow(flow):
    """``w = u`` with ``w.u = 800``: normflows' ``log(1 + exp(w.u))`` overflows there."""
    import torch
    with torch.no_grad():
        value = (800.0 / flow.w.numel()) ** 0.5
        flow.w.fill_(value)
        flow.u.fill_(value)


def pyro_spline_at_bound(seed, dim=3):
    """Points with one coordinate exactly on the bound B = 3 (and one on -B)."""
    z = normal_points(seed, N_POINTS, dim)
    z[0, 0], z[1, 1] = 3.0, -3.0
    return z


def zuko_bernstein_at_switch(seed, dim=2):
    """A point at x = -B + 2 B eps (B = 5, eps = 1e-6), where zuko's BoundedBernstein hands
    over from the polynomial to its linear extrapolation."""
    z = normal_points(seed, N_POINTS, dim)
    z[0, 0] = -5.0 + 2 * 5.0 * 1e-6
    return z


#: Distance of the boundary points from ``+-B``, relative to ``B``: 1e-4 B is ~16 first-pass
#: finite-difference steps (``eps^(1/3) |x| ~ 6e-6 B``), so the first pass (steps ``h``, ``h/2``)
#: and the finer levels of a sweep never straddle the bound.
NEAR_BOUND = 1e-4


def bound_points(bound):
    """``z(seed, dim)``: points near and beyond a spline's bound ``B``, the other coordinates
    standard normal:

    - row 0 just inside ``B`` and row 1 just inside ``-B`` (``NEAR_BOUND`` B away);
    - row 2 just outside both (``B (1 + NEAR_BOUND)`` in the first coordinate,
      ``-B (1 + NEAR_BOUND)`` in the last);
    - row 3 wholly in the tails (``+-1.5 B``).

    No point lies exactly on ``+-B`` or within a finite-difference step of it: a spline is only
    piecewise smooth there (a kink where its boundary slope differs from the tails', a jump of
    the curvature where it does not), and central differences across it compare the layer's
    derivative with a mixture of the two sides (an earlier version put points at ``+-B`` and at
    ``B (1 - 1e-6)``: five implementations then "failed" for the oracle's finite differences,
    not for their maps). The recipes that probe ``x = +-B`` itself claim smoothness
    (``smooth=True``), so that a kink there is the finding.
    """
    def z(seed, dim):
        pts = normal_points(seed, N_POINTS, dim)
        pts[0, 0] = bound * (1 - NEAR_BOUND)
        pts[1, dim - 1] = -bound * (1 - NEAR_BOUND)
        pts[2, 0] = bound * (1 + NEAR_BOUND)
        pts[2, dim - 1] = -bound * (1 + NEAR_BOUND)
        pts[3] = 1.5 * bound * np.where(np.arange(dim) % 2 == 0, 1.0, -1.0)
        return pts
    return z


def wide_points(scale):
    """``z(seed, dim)``: normal points of standard deviation ``scale`` (saturating sigmoids and
    tanh, large shifts)."""
    def z(seed, dim):
        return normal_points(seed, N_POINTS, dim, scale)
    return z


# -------------------------------------------------------------------------------------- TFP
def tfp_bijector(make, shapes, dim=3, scale=0.3, points=1.0, z=None, context=None, eager=False,
                 **options):
    """``make(params, dim) -> tfp bijector`` (JAX substrate) on batches, log-dets with
    ``event_ndims=1`` (broadcast over the batch where the map is linear);
    ``shapes(dim) -> {name: shape}``. ``context=k``: every call passes
    ``conditional_input`` (a fixed random context, one row per point) through to the
    bijector's ``shift_and_log_scale_fn``. ``eager=True``: run without ``jit`` (bijectors that
    compute shapes from their parameters' values)."""
    def build(seed):
        enable_x64()
        rng = np.random.default_rng(seed)
        params = {k: scale * rng.standard_normal(s) for k, s in shapes(dim).items()}
        c = None if context is None else context_vector(seed, context)

        def kwargs(v):
            import jax.numpy as jnp
            if c is None:
                return {}
            cond = jnp.broadcast_to(jnp.asarray(c, dtype=v.dtype), v.shape[:-1] + c.shape)
            return {"conditional_input": cond}

        def forward(p, x):
            import jax.numpy as jnp
            b = make(p, dim)
            return b.forward(x, **kwargs(x)), jnp.broadcast_to(
                b.forward_log_det_jacobian(x, event_ndims=1, **kwargs(x)), x.shape[:-1])

        def inverse(p, y):
            import jax.numpy as jnp
            b = make(p, dim)
            return b.inverse(y, **kwargs(y)), jnp.broadcast_to(
                b.inverse_log_det_jacobian(y, event_ndims=1, **kwargs(y)), y.shape[:-1])

        return jax_layer(forward, inverse, params, _points(seed, dim, points, z), eager=eager,
                         **options)
    return build


def uniform_points(seed, dim, low=0.02, high=0.98):
    """Seeded points uniform in ``(low, high)^dim``: inside a transform defined on ``(0, 1)``,
    away from its ends."""
    return np.random.default_rng(seed).uniform(low, high, (N_POINTS, dim))
