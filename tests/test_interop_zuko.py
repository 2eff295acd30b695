"""refflow.interop against zuko: imported MAF / NSF / RealNVP flows agree with zuko in float64.

Log-probs to 1e-10 relative and gradients (zuko's autograd vs refflow's hand-derived pullbacks)
to 1e-8 relative, for random and briefly trained models, conditional or not; sampling agrees
given the same base noise; a planted mismatch is caught; unsupported layers are refused.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zuko = pytest.importorskip("zuko")

from refflow import MaskedAffineAutoregressive, MaskedSplineAutoregressive  # noqa: E402
from refflow import AffineCoupling, SplineCoupling  # noqa: E402
from refflow.interop import assert_matches, compare, from_zuko  # noqa: E402
from .helpers import assert_refused, scaled_torch_model, torch_adam_steps  # noqa: E402

RTOL_LP, RTOL_GRAD, RTOL_ROUND_TRIP = 1e-10, 1e-8, 1e-10

MODELS = {
    "maf": lambda: zuko.flows.MAF(3, transforms=2, hidden_features=[16, 16]),
    "maf_conditional": lambda: zuko.flows.MAF(4, 2, transforms=3, hidden_features=[16]),
    "maf_randperm_wide": lambda: zuko.flows.MAF(6, transforms=2, hidden_features=[32, 24],
                                                randperm=True),
    "maf_passes2_conditional": lambda: zuko.flows.MAF(5, 3, transforms=2, passes=2,
                                                      hidden_features=[16, 7]),
    "maf_tanh": lambda: zuko.flows.MAF(3, transforms=2, hidden_features=[8],
                                       activation=torch.nn.Tanh),
    "nsf": lambda: zuko.flows.NSF(3, transforms=2, bins=5, hidden_features=[16, 16]),
    "nsf_conditional": lambda: zuko.flows.NSF(4, 2, transforms=2, bins=4, hidden_features=[12]),
    "nsf_elu_slope": lambda: zuko.flows.NSF(2, transforms=3, bins=6, slope=1e-2,
                                            hidden_features=[8, 8], activation=torch.nn.ELU),
    "realnvp": lambda: zuko.flows.RealNVP(4, transforms=3, hidden_features=[16, 16]),
    "realnvp_conditional": lambda: zuko.flows.RealNVP(3, 2, transforms=2, hidden_features=[8]),
    "realnvp_spline": lambda: zuko.flows.NICE(
        5, 1, transforms=2, hidden_features=[8], randmask=True,
        univariate=zuko.transforms.MonotonicRQSTransform, shapes=[(4,), (4,), (3,)]),
}


def _make(model_id, seed):
    return scaled_torch_model(MODELS[model_id], seed)


def _data(flow, n, seed):
    rng = np.random.default_rng(seed)
    model = from_zuko(flow)
    x = 1.5 * rng.standard_normal((n, model.dim))
    c = None if model.context_dim is None else rng.standard_normal((n, model.context_dim))
    return model, x, c


@pytest.mark.parametrize("model_id", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_init_log_prob_and_gradients_agree(model_id, seed):
    flow = _make(model_id, seed)
    model, x, c = _data(flow, 16, seed)
    report = assert_matches(flow, model, x, c, rtol_log_prob=RTOL_LP, rtol_grad=RTOL_GRAD)
    assert report.ok and report.max_log_prob_rel <= RTOL_LP and report.max_grad_rel <= RTOL_GRAD
    # every zuko parameter is compared, and the gradients are not trivially zero
    assert set(report.grad_rel) == {n for n, _ in flow.named_parameters()}
    assert sum(np.linalg.norm(g) for g in report.grad_peer.values()) > 0


@pytest.mark.parametrize("model_id", ["maf_conditional", "nsf", "realnvp_conditional",
                                      "realnvp_spline", "maf_passes2_conditional"])
def test_briefly_trained_models_agree(model_id):
    flow = _make(model_id, 3)
    _, x, c = _data(flow, 32, 3)
    torch_adam_steps(flow, x, c)
    model = from_zuko(flow)  # imported after training
    assert_matches(flow, model, x[:12], None if c is None else c[:12])


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_sampling_agrees_given_the_same_base_noise(model_id):
    flow = _make(model_id, 5).double()
    model, _, _ = _data(flow, 1, 5)
    rng = np.random.default_rng(7)
    z = rng.standard_normal((10, model.dim))
    c = None if model.context_dim is None else rng.standard_normal((10, model.context_dim))
    with torch.no_grad():
        x_peer = flow(None if c is None else torch.as_tensor(c)).transform.inv(
            torch.as_tensor(z)).numpy()
    x_ref, _ = model.bijector.forward(z, context=c)
    scale = np.maximum(np.abs(x_peer), 1.0)
    assert np.max(np.abs(x_ref - x_peer) / scale) <= RTOL_ROUND_TRIP
    # and refflow's sample_and_log_prob path gives the same log-density at those points
    lp_ref = model.log_prob(x_ref, context=c)
    with torch.no_grad():
        lp_peer = flow(None if c is None else torch.as_tensor(c)).log_prob(
            torch.as_tensor(x_peer)).numpy()
    assert np.max(np.abs(lp_ref - lp_peer) / np.maximum(np.abs(lp_peer), 1.0)) <= RTOL_LP


def test_layer_types_and_options_of_the_import():
    model = from_zuko(_make("maf_conditional", 0))
    layers = model.bijector.layers
    assert all(isinstance(l, MaskedAffineAutoregressive) for l in layers)
    assert all(l.scale == "softclip" and l.scale_side == "density" for l in layers)
    # zuko's transforms[0] (natural order) touches x: refflow's last layer
    assert layers[-1].made.order.tolist() == [0, 1, 2, 3]
    assert layers[-2].made.order.tolist() == [3, 2, 1, 0]
    nsf = from_zuko(_make("nsf_elu_slope", 0)).bijector.layers
    assert all(isinstance(l, MaskedSplineAutoregressive) and l.parameterization == "zuko"
               for l in nsf)
    assert nsf[0]._map.min_derivative == 1e-2 and nsf[0].made.activation == "elu"
    nvp = from_zuko(_make("realnvp", 0)).bijector.layers
    assert all(isinstance(l, AffineCoupling) and l.scale_side == "density" for l in nvp)
    # zuko's mask True = identity; refflow's True = transformed
    flow = _make("realnvp", 0)
    zmask = flow.transform.transforms[0].mask.numpy()
    assert np.array_equal(nvp[-1].buffers["mask"], ~zmask)
    assert isinstance(from_zuko(_make("realnvp_spline", 0)).bijector.layers[0], SplineCoupling)


def test_imported_masks_equal_zukos():
    flow = _make("maf_passes2_conditional", 0)
    model = from_zuko(flow)
    for i, lazy in enumerate(flow.transform.transforms):
        layer = model.bijector.layers[len(model.bijector.layers) - 1 - i]
        theirs = [m.mask.numpy() for m in lazy.hyper if hasattr(m, "mask")]
        assert len(theirs) == len(layer.made.masks)
        for a, b in zip(layer.made.masks, theirs):
            assert np.array_equal(a.astype(bool), b)


def test_planted_mismatch_is_caught():
    flow = _make("nsf_conditional", 2)
    model, x, c = _data(flow, 8, 2)
    assert compare(flow, model, x, c).ok
    with torch.no_grad():
        flow.transform.transforms[1].hyper[2].weight[3, 1] += 1e-6  # after the import
    report = compare(flow, model, x, c)
    assert not report.ok
    assert report.max_log_prob_rel > RTOL_LP
    text = str(report)
    assert "MISMATCH" in text
    with pytest.raises(AssertionError, match="MISMATCH"):
        assert_matches(flow, model, x, c)


def test_planted_gradient_only_mismatch_names_the_parameter():
    flow = _make("realnvp", 4)
    model, x, c = _data(flow, 8, 4)
    # perturb one refflow weight (refflow layer 2 is zuko's transforms[0]): the report must
    # fail and name a parameter of that zuko layer among the worst gradient entries
    key = "bijector.layers.2.conditioner.w1"
    model.params[key] = model.params[key] * (1 + 1e-7)
    report = compare(flow, model, x, c)
    assert not report.ok
    worst = max(report.grad_rel, key=report.grad_rel.get)
    assert worst.startswith("transform.transforms.0.hyper.")
    assert worst in str(report)


def test_compare_does_not_touch_the_callers_model_or_default_dtype():
    flow = _make("maf", 0)
    before = copy.deepcopy(flow.state_dict())
    dtype = torch.get_default_dtype()
    model, x, c = _data(flow, 4, 0)
    assert_matches(flow, model, x, c)
    assert torch.get_default_dtype() == dtype
    for k, v in flow.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k])
    assert all(p.grad is None for p in flow.parameters())


def test_scale_side_density_is_zukos_affine_map_on_one_layer():
    """The affine layer itself: refflow's density-side MAF equals MonotonicAffineTransform."""
    torch.manual_seed(0)
    flow = zuko.flows.MAF(3, transforms=1, hidden_features=[8]).double()
    layer = from_zuko(flow).bijector.layers[0]
    x = np.random.default_rng(0).normal(size=(5, 3))
    z_ref, ld_ref = layer.inverse(x)
    t = flow.transform.transforms[0]()
    xt = torch.as_tensor(x)
    z_peer = t(xt)
    ld_peer = t.log_abs_det_jacobian(xt, z_peer)
    assert np.allclose(z_ref, z_peer.detach().numpy(), rtol=1e-13, atol=1e-13)
    assert np.allclose(ld_ref, ld_peer.detach().numpy(), rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------- refused inputs
def _refused(flow, *words):
    assert_refused(from_zuko, flow, *words)


def test_unsupported_layers_and_options_are_refused():
    torch.manual_seed(0)
    _refused(zuko.flows.UNAF(3, transforms=1, hidden_features=[8]), "transforms[0]",
             "UMNN", "log g(x)")
    _refused(zuko.flows.UNAF(3, transforms=2, hidden_features=[8]), "transforms[0]", "UMNN")
    _refused(zuko.flows.Flow([zuko.flows.UnconditionalTransform(zuko.transforms.ExpTransform)],
                             zuko.flows.MAF(3).base), "transforms[0]", "UnconditionalTransform",
             "ExpTransform", "not supported")
    _refused(zuko.flows.MAF(3, transforms=1, hidden_features=[8], activation=torch.nn.SiLU),
             "MaskedAutoregressiveTransform", "activation")
    _refused(zuko.flows.RealNVP(3, transforms=1, hidden_features=[8], normalize=True),
             "GeneralCouplingTransform", "normalize")
    _refused(zuko.flows.MAF(3, transforms=1, hidden_features=[8], univariate=_affine_slope_1e2),
             "univariate", "_affine_slope_1e2")
    circular_coupling = zuko.flows.Flow(
        [zuko.flows.GeneralCouplingTransform(
            3, univariate=zuko.flows.spline.CircularRQSTransform, shapes=[(4,), (4,), (3,)],
            hidden_features=[8])], zuko.flows.NCSF(3).base)
    _refused(circular_coupling, "GeneralCouplingTransform", "'circular'", "univariate")
    trainable_bound = zuko.flows.Flow(
        [zuko.flows.UnconditionalTransform(zuko.transforms.SoftclipTransform,
                                           bound=torch.tensor(11.0))], zuko.flows.MAF(3).base)
    _refused(trainable_bound, "transforms[0]", "SoftclipTransform", "trainable bound")
    trainable = zuko.flows.Flow(zuko.flows.MAF(3, transforms=1).transform,
                                zuko.flows.UnconditionalDistribution(
                                    zuko.distributions.DiagNormal, torch.zeros(3),
                                    torch.ones(3)))
    _refused(trainable, "base", "trainable")
    _refused(zuko.flows.MAF(1, transforms=1, hidden_features=[8]), "transforms[0]")
    adjacency = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=bool)
    custom = zuko.flows.Flow(
        [zuko.flows.MaskedAutoregressiveTransform(3, adjacency=adjacency, hidden_features=[8])],
        zuko.flows.MAF(3).base)
    _refused(custom, "adjacency")
    with pytest.raises(TypeError, match="zuko"):
        from_zuko(torch.nn.Linear(2, 2))


def _affine_slope_1e2(shift, scale):
    return zuko.transforms.MonotonicAffineTransform(shift, scale, slope=1e-2)


def test_affine_univariate_with_other_slope_is_refused():
    import functools
    flow = zuko.flows.MAF(3, transforms=1, hidden_features=[8], univariate=functools.partial(
        zuko.transforms.MonotonicAffineTransform, slope=1e-2))
    _refused(flow, "MonotonicAffineTransform", "slope")


def test_compare_refuses_bad_points():
    flow = _make("maf", 0)
    model = from_zuko(flow)
    with pytest.raises(ValueError, match="compare: x must have shape"):
        compare(flow, model, np.zeros((4, 2)))
    with pytest.raises(TypeError, match="compare"):
        compare(torch.nn.Linear(2, 2), model, np.zeros((4, 3)))


# ------------------------------------------------------------------ the README's examples run
def _readme_example(tag):
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# readme-example: [\w-]+\n.*?)```", text, flags=re.S)
    found = [b for b in blocks if b.startswith(f"# readme-example: {tag}\n")]
    assert len(found) == 1, f"README example {tag!r} not found"
    return found[0]


@pytest.mark.parametrize("tag", ["zuko", "torch-layer"])
def test_readme_examples_run(tag, capsys):
    exec(compile(_readme_example(tag), f"README.md ({tag})", "exec"), {"__name__": "readme"})
    assert "ok" in capsys.readouterr().out.lower()


# --------------------------------------------------------------------- GF (Gaussianization)
GF_MODELS = [(3, 0, 4), (2, 0, 8), (4, 2, 3), (3, 3, 5), (1, 0, 6), (2, 1, 2)]


@pytest.mark.parametrize("dim, context, components", GF_MODELS)
def test_gf_layer_log_prob_gradients_and_samples_agree(dim, context, components):
    torch.manual_seed(dim + 10 * context + components)
    flow = zuko.flows.GF(dim, context, transforms=1, components=components,
                         hidden_features=[8, 8]).double()
    with torch.no_grad():  # away from zuko's initialisation, as after training
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model = from_zuko(flow)
    rng = np.random.default_rng(components)
    x = 1.5 * rng.standard_normal((20, dim))
    c = None if not context else rng.standard_normal((20, context))
    report = assert_matches(flow, model, x, c, rtol_log_prob=RTOL_LP, rtol_grad=RTOL_GRAD)
    assert set(report.grad_rel) == {n for n, _ in flow.named_parameters()}
    # zuko samples by bisection (tolerance 1e-6); refflow's sample is checked with zuko's closed
    # form instead: zuko's data-to-noise map takes it back to the base noise.
    z = rng.standard_normal((20, dim))
    x_ref, _ = model.bijector.forward(z, context=c)
    with torch.no_grad():
        z_back = flow(None if c is None else torch.as_tensor(c)).transform(
            torch.as_tensor(x_ref)).numpy()
    assert np.max(np.abs(z_back - z)) <= RTOL_ROUND_TRIP * np.max(np.maximum(np.abs(z), 1.0))


# ------------------------------------- monotone transformers, linear layers, other bases
def _lazy_stack(*layers, base="normal", dim=3):
    """A zuko ``Flow`` of the given lazy layers and a fixed base."""
    from zuko.lazy import UnconditionalDistribution
    if base == "box":
        dist = UnconditionalDistribution(zuko.distributions.BoxUniform, torch.full((dim,), -40.0),
                                         torch.full((dim,), 40.0), buffer=True)
    else:
        loc = torch.zeros(dim) if base == "standard" else torch.linspace(-0.5, 0.5, dim)
        dist = UnconditionalDistribution(zuko.distributions.DiagNormal, loc,
                                         torch.full((dim,), 1.3), buffer=True)
    return zuko.flows.Flow(list(layers), dist)


def _autoregressive(dim, context, order, **kwargs):
    return zuko.flows.MaskedAutoregressiveTransform(dim, context, order=torch.as_tensor(order),
                                                    **kwargs)


def _unconditional(kind, dim, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "rotation":
        return zuko.flows.UnconditionalTransform(zuko.transforms.RotationTransform,
                                                 torch.randn(dim, dim, generator=g))
    lu = torch.eye(dim) + 0.4 * torch.randn(dim, dim, generator=g)
    return zuko.flows.UnconditionalTransform(zuko.transforms.LULinearTransform, lu)


def _naf_layer(dim, context, order, signal=3, network=(6, 5)):
    from zuko.flows.neural import MNN
    return _autoregressive(dim, context, order, hidden_features=[8],
                           univariate=MNN(signal=signal, stack=dim, hidden_features=network),
                           shapes=[(signal,)])


NEW_MODELS = {
    "naf": lambda: zuko.flows.NAF(3, 2, transforms=1, signal=3,
                                  network={"hidden_features": [6, 5]}, hidden_features=[8]),
    "naf_stack_rotation": lambda: _lazy_stack(
        _naf_layer(3, 0, [0, 1, 2]), _unconditional("rotation", 3, 1),
        _naf_layer(3, 0, [2, 0, 1], signal=2, network=(4,))),
    "sospf": lambda: zuko.flows.SOSPF(3, 1, transforms=1, hidden_features=[8]),
    # transforms > 1: SoftclipTransform(bound=11) between the layers
    "naf_3_softclip": lambda: zuko.flows.NAF(3, 2, transforms=3, signal=3,
                                             network={"hidden_features": [6]},
                                             hidden_features=[8]),
    "sospf_2_softclip": lambda: zuko.flows.SOSPF(3, transforms=2, degree=3, polynomials=2,
                                                 hidden_features=[8]),
    "softclip_bound_positional": lambda: _lazy_stack(
        _autoregressive(3, 0, [0, 1, 2], hidden_features=[8]),
        zuko.flows.UnconditionalTransform(zuko.transforms.SoftclipTransform, 2.5),
        _autoregressive(3, 0, [2, 1, 0], hidden_features=[8])),
    "bpf": lambda: zuko.flows.BPF(3, 2, transforms=2, degree=8, hidden_features=[8]),
    "bernstein_linear_box": lambda: _lazy_stack(
        _autoregressive(3, 0, [1, 0, 2], hidden_features=[8],
                        univariate=zuko.transforms.BernsteinTransform, shapes=[(7,)]),
        base="box"),
    "gf": lambda: zuko.flows.GF(3, 2, transforms=3, components=4, hidden_features=[8]),
    "maf_lu_rotation": lambda: _lazy_stack(
        _autoregressive(3, 2, [0, 1, 2], hidden_features=[8]),
        _unconditional("lu", 3, 2), _unconditional("rotation", 3, 3),
        _autoregressive(3, 2, [2, 1, 0], hidden_features=[8])),
}


@pytest.mark.parametrize("model_id", sorted(NEW_MODELS))
def test_new_layers_log_prob_and_gradients_agree(model_id):
    """float64 log-probs to 1e-10 relative and every zuko parameter's gradient to 1e-8."""
    torch.manual_seed(11)
    flow = NEW_MODELS[model_id]().double()
    with torch.no_grad():  # away from zuko's initialisation, as after training
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model, x, c = _data(flow, 16, 4)
    report = assert_matches(flow, model, x, c, rtol_log_prob=RTOL_LP, rtol_grad=RTOL_GRAD)
    assert set(report.grad_rel) == {n for n, _ in flow.named_parameters()}
    assert all(np.linalg.norm(g) > 0 for g in report.grad_peer.values())


def test_lu_and_rotation_layers_and_base_of_the_import():
    from refflow import DiagNormal, Inverse, LULinear, Rotation, Uniform
    model = from_zuko(NEW_MODELS["maf_lu_rotation"]())
    inner = [type(b.bijector) for b in model.bijector.layers if isinstance(b, Inverse)]
    assert inner == [Rotation, LULinear] and isinstance(model.base, DiagNormal)
    lu = [b.bijector for b in model.bijector.layers if isinstance(b, Inverse)][1]
    assert (lu.upper_diag, lu.diagonal) == ("raw", "lower")
    assert isinstance(from_zuko(NEW_MODELS["bernstein_linear_box"]()).base, Uniform)


def _random_config(rng):
    """A random zuko flow of the newly imported layers (dim, context, widths, orders, options
    drawn from ``rng``)."""
    dim, context = int(rng.integers(2, 5)), int(rng.choice([0, 0, 1, 3]))
    layers = []
    for k in range(int(rng.integers(1, 4))):
        order = rng.permutation(dim).tolist()
        hidden = [int(h) for h in rng.integers(dim, 12, size=rng.integers(1, 3))]
        kind = rng.choice(["naf", "sos", "bpf", "bernstein", "affine", "spline"])
        if kind == "naf":
            from zuko.flows.neural import MNN
            signal = int(rng.integers(1, 4))
            layer = _autoregressive(dim, context, order, hidden_features=hidden,
                                    univariate=MNN(signal=signal, stack=dim,
                                                   hidden_features=[int(rng.integers(2, 7))]),
                                    shapes=[(signal,)])
        elif kind == "sos":
            from zuko.flows.polynomial import ShiftedSOSPTransform
            K, L = int(rng.integers(1, 4)), int(rng.integers(1, 5))
            import functools
            layer = _autoregressive(dim, context, order, hidden_features=hidden,
                                    univariate=functools.partial(ShiftedSOSPTransform,
                                                                 slope=1e-3),
                                    shapes=[(K, L + 1), ()])
        elif kind in ("bpf", "bernstein"):
            cls = zuko.transforms.BoundedBernsteinTransform if kind == "bpf" else \
                zuko.transforms.BernsteinTransform
            layer = _autoregressive(dim, context, order, hidden_features=hidden,
                                    univariate=cls, shapes=[(int(rng.integers(3, 9)),)])
        elif kind == "affine":
            layer = _autoregressive(dim, context, order, hidden_features=hidden)
        else:
            layer = _autoregressive(dim, context, order, hidden_features=hidden,
                                    univariate=zuko.transforms.MonotonicRQSTransform,
                                    shapes=[(4,), (4,), (3,)])
        layers.append(layer)
        if rng.random() < 0.5:
            layers.append(_unconditional(rng.choice(["lu", "rotation"]), dim,
                                         int(rng.integers(100))))
    base = rng.choice(["standard", "normal", "box"])
    return _lazy_stack(*layers, base=str(base), dim=dim), context


@pytest.mark.parametrize("seed", range(4))
def test_randomly_configured_models_agree(seed):
    rng = np.random.default_rng(1000 + seed)
    torch.manual_seed(seed)
    flow, context = _random_config(rng)
    flow = flow.double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model = from_zuko(flow)
    x = 1.5 * rng.standard_normal((12, model.dim))
    c = rng.standard_normal((12, context)) if context else None
    report = assert_matches(flow, model, x, c, rtol_log_prob=RTOL_LP, rtol_grad=RTOL_GRAD)
    assert set(report.grad_rel) == {n for n, _ in flow.named_parameters()}


def test_softclip_layers_of_naf_and_sospf_import_as_inverse_softclip():
    from refflow import Inverse, Softclip
    torch.manual_seed(0)
    flow = zuko.flows.NAF(3, transforms=3, signal=2, network={"hidden_features": [4]},
                          hidden_features=[8])
    layers = from_zuko(flow).bijector.layers
    clips = [b for b in layers if type(b) is Inverse and type(b.bijector) is Softclip]
    assert len(clips) == 2 and all(b.bijector.bound == 11.0 for b in clips)
    assert [i for i, b in enumerate(layers) if b in clips] == [1, 3]  # between the NAF layers


@pytest.mark.parametrize("model_id", ["naf_3_softclip", "sospf_2_softclip"])
def test_briefly_trained_softclip_stacks_agree(model_id):
    torch.manual_seed(4)
    flow = NEW_MODELS[model_id]()
    model, x, c = _data(flow, 32, 4)
    torch_adam_steps(flow, x, c)
    report = assert_matches(flow, from_zuko(flow), x[:12], None if c is None else c[:12],
                            rtol_log_prob=RTOL_LP, rtol_grad=RTOL_GRAD)
    assert set(report.grad_rel) == {n for n, _ in flow.named_parameters()}


def _angles(rng, n, dim):
    return rng.uniform(-np.pi, np.pi, size=(n, dim))


@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("trained", [False, True])
def test_ncsf_log_prob_gradients_and_samples_agree(context, trained):
    """zuko's NCSF (circular shift on the transformed angle, the MADE on the unshifted one):
    log-probs to 1e-10, gradients to 1e-8, random and briefly trained; samples given the same
    base noise (zuko's spline inverse is closed form)."""
    torch.manual_seed(context + 10 * trained)
    flow = zuko.flows.NCSF(3, context, transforms=3, bins=5, hidden_features=[12, 12])
    rng = np.random.default_rng(context)
    x = _angles(rng, 32, 3)
    c = rng.standard_normal((32, context)) if context else None
    if trained:
        torch_adam_steps(flow, x, c)
    else:
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
    model = from_zuko(flow)
    report = assert_matches(flow, model, x[:16], None if c is None else c[:16],
                            rtol_log_prob=RTOL_LP, rtol_grad=RTOL_GRAD)
    assert set(report.grad_rel) == {n for n, _ in flow.named_parameters()}
    assert all(np.linalg.norm(g) > 0 for g in report.grad_peer.values())
    flow = flow.double()
    z = rng.uniform(-3.0, 3.0, size=(10, 3))
    cc = None if c is None else c[:10]
    with torch.no_grad():
        x_peer = flow(None if cc is None else torch.as_tensor(cc)).transform.inv(
            torch.as_tensor(z)).numpy()
    x_ref, _ = model.bijector.forward(z, context=cc)
    # the same angle (zuko's remainder and refflow's agree on which representative)
    assert np.max(np.abs(x_ref - x_peer)) <= RTOL_ROUND_TRIP * np.pi


def test_report_compares_a_zero_gradient_at_the_noise_floor():
    """A gradient that is exactly zero (rounding noise on both sides) is compared against
    GRAD_NOISE_FLOOR times the model's largest gradient, not its own noise; a wrong small
    gradient above that floor is still a mismatch."""
    from refflow.interop import ComparisonReport
    from refflow.interop.compare import GRAD_NOISE_FLOOR
    lp = np.array([-1.0, -2.0])
    big = np.array([3.0, -4.0])  # norm 5
    ok = ComparisonReport(lp, lp, {"a": big, "r": np.array([4e-15])},
                          {"a": big, "r": np.array([-3e-15])}, 1e-10, 1e-8, "zuko")
    assert ok.ok and ok.grad_rel["r"] == pytest.approx(7e-15 / (5 * GRAD_NOISE_FLOOR))
    wrong = ComparisonReport(lp, lp, {"a": big, "r": np.array([1e-7])},
                             {"a": big, "r": np.array([0.0])}, 1e-10, 1e-8, "zuko")
    assert not wrong.ok and wrong.bad_params == ["r"]
