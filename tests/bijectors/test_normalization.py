"""ActNorm and BatchNorm: data-dependent initialisation, batch/running statistics, pullbacks."""

import numpy as np
import pytest

from refflow import ActNorm, BatchNorm, Chain, Exp, Flow, Inverse, StandardNormal
from refflow.testing import assert_bijector, assert_vjp

#: Exact identities computed two ways in float64 (a few roundings apart).
RTOL_EXACT = 1e-12
#: A batch mean that should be zero: rounding of sums of O(1) values over ~100 rows.
ATOL_MEAN = 1e-13
#: float32 results compared with the float64 computation: a few float32 ulps.
RTOL_FLOAT32 = 1e-5
GUARD = 1e-6  # Glow's initialisation guard, part of the specification


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _data(rng, n=100, dim=3):
    """A batch with clearly non-zero means and non-unit, unequal scales."""
    return rng.normal(size=(n, dim)) * np.array([2.0, 0.3, 5.0])[:dim] + np.array([1.0, -4.0, 7.0])[:dim]


def _random_actnorm(rng, dim=3):
    layer = ActNorm(dim, initialized=True)
    layer.params["shift"] = rng.normal(size=dim)
    layer.params["log_scale"] = rng.normal(scale=0.7, size=dim)
    return layer


def _random_batchnorm(rng, dim=3, **kwargs):
    layer = BatchNorm(dim, **kwargs)
    layer.params["log_gamma"] = rng.normal(scale=0.7, size=dim)
    layer.params["beta"] = rng.normal(size=dim)
    layer.buffers["running_mean"][...] = rng.normal(size=dim)
    layer.buffers["running_var"][...] = rng.uniform(0.2, 3.0, size=dim)
    return layer


# =============================================================================== ActNorm
class TestActNormInit:
    def test_construction_state(self):
        layer = ActNorm(4)
        assert set(layer.params) == {"shift", "log_scale"}
        assert all(np.array_equal(v, np.zeros(4)) for v in layer.params.values())
        flag = layer.buffers["initialized"]
        assert flag.shape == () and flag.dtype == bool and not flag

    def test_first_inverse_normalises_that_batch(self, rng):
        x = _data(rng)
        layer = ActNorm(3)
        z, log_det = layer.inverse(x)
        std = x.std(axis=0)
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=ATOL_MEAN)
        np.testing.assert_allclose(z.var(axis=0), (std / (std + GUARD)) ** 2, rtol=RTOL_EXACT)
        np.testing.assert_allclose(layer.params["shift"], x.mean(axis=0), rtol=RTOL_EXACT)
        np.testing.assert_allclose(layer.params["log_scale"], np.log(std + GUARD), rtol=RTOL_EXACT)
        np.testing.assert_allclose(log_det, np.full(100, -np.log(std + GUARD).sum()), rtol=RTOL_EXACT)
        assert layer.buffers["initialized"]

    def test_first_forward_normalises_that_batch(self, rng):
        z = _data(rng)
        layer = ActNorm(3)
        x, log_det = layer.forward(z)
        std = z.std(axis=0)
        np.testing.assert_allclose(x, (z - z.mean(axis=0)) / (std + GUARD), rtol=RTOL_EXACT, atol=ATOL_MEAN)
        np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=ATOL_MEAN)
        np.testing.assert_allclose(x.var(axis=0), (std / (std + GUARD)) ** 2, rtol=RTOL_EXACT)
        np.testing.assert_allclose(log_det, np.full(100, -np.log(std + GUARD).sum()), rtol=RTOL_EXACT)
        assert layer.buffers["initialized"]

    @pytest.mark.parametrize("direction", ["forward", "inverse"])
    def test_vjp_call_initialises_and_pullback_treats_params_as_constants(self, rng, direction):
        v = _data(rng, n=20)
        layer = ActNorm(3)
        out, log_det, pullback = getattr(layer, f"{direction}_vjp")(v)
        np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=ATOL_MEAN)
        # The pullback is the plain affine one at the parameters the call set.
        ref = ActNorm(3, initialized=True)
        ref.params.update(layer.params)
        out_ref, log_det_ref, pullback_ref = getattr(ref, f"{direction}_vjp")(v)
        np.testing.assert_array_equal(out, out_ref)
        np.testing.assert_array_equal(log_det, log_det_ref)
        out_bar, log_det_bar = rng.normal(size=out.shape), rng.normal(size=20)
        in_bar, grads = pullback(out_bar, log_det_bar)
        in_bar_ref, grads_ref = pullback_ref(out_bar, log_det_bar)
        np.testing.assert_array_equal(in_bar, in_bar_ref)
        for key in grads_ref:
            np.testing.assert_array_equal(grads[key], grads_ref[key])

    def test_eval_mode_also_initialises(self, rng):
        x = _data(rng)
        layer = ActNorm(3).eval()
        z, _ = layer.inverse(x)
        assert layer.buffers["initialized"]
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=ATOL_MEAN)

    @pytest.mark.parametrize("first", ["forward", "inverse"])
    def test_second_call_does_not_reinitialise(self, rng, first):
        layer = ActNorm(3)
        getattr(layer, first)(_data(rng))
        snapshot = {k: v.copy() for k, v in layer.params.items()}
        other = _data(rng) * 3.0 + 1.0
        for call in (layer.forward, layer.inverse, layer.forward_vjp, layer.inverse_vjp):
            call(other)
        for key, value in snapshot.items():
            np.testing.assert_array_equal(layer.params[key], value)
        # ... and the second call is the plain affine map with those parameters.
        z, _ = layer.inverse(other)
        np.testing.assert_allclose(
            z, (other - snapshot["shift"]) * np.exp(-snapshot["log_scale"]), rtol=RTOL_EXACT
        )

    def test_initialized_true_skips_initialisation(self, rng):
        layer = ActNorm(3, initialized=True)
        x = _data(rng)
        z, log_det = layer.inverse(x)
        np.testing.assert_array_equal(z, x)          # zero parameters: the identity
        np.testing.assert_array_equal(log_det, np.zeros(100))
        layer.params["shift"] = [1.0, 2.0, 3.0]
        layer.params["log_scale"] = [0.5, -0.5, 0.0]
        x2, _ = layer.forward(np.ones((2, 3)))
        np.testing.assert_allclose(x2, np.ones((2, 3)) * np.exp([0.5, -0.5, 0.0]) + [1.0, 2.0, 3.0])

    def test_resetting_the_flag_initialises_again(self, rng):
        layer = ActNorm(3)
        layer.inverse(_data(rng))
        layer.buffers["initialized"][...] = False
        x = _data(rng) * 10.0
        layer.inverse(x)
        np.testing.assert_allclose(layer.params["shift"], x.mean(axis=0), rtol=RTOL_EXACT)

    @pytest.mark.parametrize("direction", ["forward", "inverse", "forward_vjp", "inverse_vjp"])
    def test_empty_batch_does_not_initialise(self, rng, direction):
        layer = ActNorm(3)
        result = getattr(layer, direction)(np.zeros((0, 3)))
        assert result[0].shape == (0, 3) and result[1].shape == (0,)
        assert not layer.buffers["initialized"]
        assert all(np.array_equal(v, np.zeros(3)) for v in layer.params.values())
        if direction.endswith("vjp"):
            in_bar, grads = result[2](np.zeros((0, 3)), np.zeros(0))
            assert in_bar.shape == (0, 3)
            assert all(np.array_equal(g, np.zeros(3)) for g in grads.values())
        layer.inverse(_data(rng))                      # the next real batch still initialises
        assert layer.buffers["initialized"]

    @pytest.mark.filterwarnings("ignore:overflow")
    def test_failed_initialisation_changes_nothing(self):
        layer = ActNorm(1)
        with pytest.raises(ValueError, match="ActNorm.inverse: data-dependent initialisation"):
            layer.inverse(np.full((2, 1), 1.5e308))  # the mean overflows float64
        assert not layer.buffers["initialized"]
        assert all(np.array_equal(v, np.zeros(1)) for v in layer.params.values())

    @pytest.mark.filterwarnings("ignore:overflow")
    def test_non_finite_first_pass_commits_nothing(self):
        # Statistics finite in float64, but x - shift overflows float32 in the last row.
        layer = ActNorm(1)
        x = np.array([[3e38], [3e38], [-3e38]], dtype=np.float32)
        with pytest.raises(ValueError, match="not finite"):
            layer.inverse(x)
        assert not layer.buffers["initialized"]
        assert all(np.array_equal(v, np.zeros(1)) for v in layer.params.values())

    def test_inverse_wrapper_initialises_on_the_data_side(self, rng):
        x = _data(rng)
        inner = ActNorm(3)
        z, _ = Inverse(inner).forward(x)             # Inverse(ActNorm).forward is ActNorm.inverse
        np.testing.assert_allclose(inner.params["shift"], x.mean(axis=0), rtol=RTOL_EXACT)
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=ATOL_MEAN)

    def test_chain_initialises_its_actnorm_and_shares_the_buffer(self, rng):
        layer = ActNorm(3)
        chain = Chain([layer])
        flag = chain.buffers["layers.0.initialized"]
        chain.inverse(_data(rng))
        assert flag and layer.buffers["initialized"] is flag

    def test_float32_initialisation(self, rng):
        x = _data(rng).astype(np.float32)
        layer = ActNorm(3)
        z, log_det = layer.inverse(x)
        assert z.dtype == np.float32 and log_det.dtype == np.float32
        assert layer.params["shift"].dtype == np.float64
        x64 = x.astype(np.float64)               # statistics are taken in float64
        np.testing.assert_allclose(layer.params["shift"], x64.mean(axis=0), rtol=RTOL_EXACT)
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=RTOL_FLOAT32)
        np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=RTOL_FLOAT32)


class TestActNormMap:
    def test_formulas(self, rng):
        layer = _random_actnorm(rng)
        b, a = layer.params["shift"].copy(), layer.params["log_scale"].copy()
        z = rng.normal(size=(5, 3))
        x, ld_f = layer.forward(z)
        np.testing.assert_allclose(x, z * np.exp(a) + b, rtol=RTOL_EXACT)
        np.testing.assert_allclose(ld_f, np.full(5, a.sum()), rtol=RTOL_EXACT)
        z2, ld_i = layer.inverse(x)
        np.testing.assert_allclose(z2, z, rtol=RTOL_EXACT)
        np.testing.assert_array_equal(ld_i, -ld_f)

    def test_oracle_bijector(self, rng):
        layer = _random_actnorm(rng)
        assert_bijector(layer.forward, layer.inverse, rng.normal(size=(6, 3)))

    @pytest.mark.parametrize("direction", ["forward_vjp", "inverse_vjp"])
    def test_oracle_vjp(self, rng, direction):
        layer = _random_actnorm(rng)
        assert_vjp(getattr(layer, direction), rng.normal(size=(5, 3)), layer.params, rng=0)

    def test_float32_in_float32_out(self, rng):
        layer = _random_actnorm(rng)
        z = rng.normal(size=(4, 3))
        x32, ld32 = layer.forward(z.astype(np.float32))
        x64, ld64 = layer.forward(z.astype(np.float32).astype(np.float64))
        assert x32.dtype == np.float32 and ld32.dtype == np.float32
        np.testing.assert_allclose(x32, x64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
        _, _, pullback = layer.inverse_vjp(x32)
        x_bar, grads = pullback(np.ones((4, 3), np.float32), np.ones(4, np.float32))
        assert x_bar.dtype == np.float32
        assert all(g.dtype == np.float64 for g in grads.values())

    def test_single_point(self, rng):
        layer = _random_actnorm(rng)
        z = rng.normal(size=3)
        x, log_det = layer.forward(z)
        assert x.shape == (3,) and np.ndim(log_det) == 0
        z2, _ = layer.inverse(x)
        np.testing.assert_allclose(z2, z, rtol=RTOL_EXACT)

    def test_single_point_initialisation_uses_the_guard(self):
        layer = ActNorm(2)
        z, _ = layer.inverse(np.array([3.0, -1.0]))   # std 0: log_scale = log(1e-6)
        np.testing.assert_array_equal(z, np.zeros(2))
        np.testing.assert_allclose(layer.params["log_scale"], np.log(GUARD), rtol=RTOL_EXACT)

    @pytest.mark.parametrize("kwargs, error", [
        ({"dim": 0}, ValueError), ({"dim": 2.5}, TypeError),
        ({"dim": 2, "initialized": "yes"}, ValueError), ({"dim": 2, "initialized": 1}, ValueError)])
    def test_bad_constructor_arguments(self, kwargs, error):
        with pytest.raises(error, match="ActNorm"):
            ActNorm(**kwargs)

    def test_initialized_is_keyword_only(self):
        with pytest.raises(TypeError):
            ActNorm(2, True)


# ============================================================================= BatchNorm
class TestBatchNormTraining:
    def test_construction_state(self):
        layer = BatchNorm(4)
        assert set(layer.params) == {"log_gamma", "beta"}     # no running statistics here
        assert set(layer.buffers) == {"running_mean", "running_var"}
        np.testing.assert_array_equal(layer.buffers["running_mean"], np.zeros(4))
        np.testing.assert_array_equal(layer.buffers["running_var"], np.ones(4))
        assert layer.training and layer.momentum == 0.1 and layer.eps == 1e-5

    def test_output_is_normalised(self, rng):
        x = _data(rng)
        layer = BatchNorm(3)
        z, log_det = layer.inverse(x)
        var = x.var(axis=0)                               # biased
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=ATOL_MEAN)
        np.testing.assert_allclose(z.var(axis=0), var / (var + 1e-5), rtol=RTOL_EXACT)
        np.testing.assert_allclose(log_det, np.full(100, -0.5 * np.log(var + 1e-5).sum()),
                                   rtol=RTOL_EXACT)

    def test_formula_with_gamma_and_beta(self, rng):
        x = _data(rng, n=10)
        layer = _random_batchnorm(rng, eps=1e-3)
        lg, beta = layer.params["log_gamma"].copy(), layer.params["beta"].copy()
        z, log_det = layer.inverse(x)
        m, v = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).mean(axis=0)
        np.testing.assert_allclose(z, (x - m) / np.sqrt(v + 1e-3) * np.exp(lg) + beta, rtol=RTOL_EXACT)
        np.testing.assert_allclose(log_det, np.full(10, (lg - 0.5 * np.log(v + 1e-3)).sum()),
                                   rtol=RTOL_EXACT)

    def test_running_statistics_update(self, rng):
        layer = BatchNorm(3, momentum=0.25)
        mean_array, var_array = layer.buffers["running_mean"], layer.buffers["running_var"]
        expected_mean, expected_var = np.zeros(3), np.ones(3)
        for _ in range(3):
            x = _data(rng, n=17)
            layer.inverse(x)
            expected_mean = 0.75 * expected_mean + 0.25 * x.mean(axis=0)
            expected_var = 0.75 * expected_var + 0.25 * x.var(axis=0)   # biased variance
            np.testing.assert_allclose(layer.buffers["running_mean"], expected_mean, rtol=RTOL_EXACT)
            np.testing.assert_allclose(layer.buffers["running_var"], expected_var, rtol=RTOL_EXACT)
        # Updated in place: a container's view of the buffers sees the new values.
        assert layer.buffers["running_mean"] is mean_array
        assert layer.buffers["running_var"] is var_array

    def test_momentum_one_copies_the_batch_statistics(self, rng):
        x = _data(rng)
        layer = BatchNorm(3, momentum=1.0)
        layer.inverse_vjp(x)                              # the vjp pass updates as well
        np.testing.assert_allclose(layer.buffers["running_mean"], x.mean(axis=0), rtol=RTOL_EXACT)
        np.testing.assert_allclose(layer.buffers["running_var"], x.var(axis=0), rtol=RTOL_EXACT)

    def test_training_output_ignores_running_statistics(self, rng):
        x = _data(rng, n=8)
        layer = _random_batchnorm(rng)
        z1, ld1 = layer.inverse(x)
        layer.buffers["running_mean"][...] = 100.0
        layer.buffers["running_var"][...] = 50.0
        z2, ld2 = layer.inverse(x)
        np.testing.assert_array_equal(z1, z2)
        np.testing.assert_array_equal(ld1, ld2)

    def test_batch_of_one(self, rng):
        layer = _random_batchnorm(rng, momentum=0.5)
        rm, rv = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
        x = rng.normal(size=(1, 3))
        z, log_det, pullback = layer.inverse_vjp(x)
        np.testing.assert_array_equal(z[0], layer.params["beta"])            # v = 0, xhat = 0
        np.testing.assert_allclose(log_det, [(layer.params["log_gamma"] - 0.5 * np.log(1e-5)).sum()],
                                   rtol=RTOL_EXACT)
        np.testing.assert_allclose(layer.buffers["running_mean"], 0.5 * rm + 0.5 * x[0], rtol=RTOL_EXACT)
        np.testing.assert_allclose(layer.buffers["running_var"], 0.5 * rv, rtol=RTOL_EXACT)
        x_bar, _ = pullback(rng.normal(size=(1, 3)), rng.normal(size=1))
        np.testing.assert_array_equal(x_bar, np.zeros((1, 3)))    # z does not depend on x

    def test_single_point_shape(self, rng):
        layer = BatchNorm(3)
        z, log_det = layer.inverse(rng.normal(size=3))
        assert z.shape == (3,) and np.ndim(log_det) == 0

    @pytest.mark.parametrize("direction", ["inverse", "inverse_vjp"])
    def test_empty_batch(self, direction):
        layer = BatchNorm(3)
        result = getattr(layer, direction)(np.zeros((0, 3)))
        assert result[0].shape == (0, 3) and result[1].shape == (0,)
        np.testing.assert_array_equal(layer.buffers["running_mean"], np.zeros(3))
        np.testing.assert_array_equal(layer.buffers["running_var"], np.ones(3))
        if direction.endswith("vjp"):
            x_bar, grads = result[2](np.zeros((0, 3)), np.zeros(0))
            assert x_bar.shape == (0, 3)
            assert all(np.array_equal(g, np.zeros(3)) for g in grads.values())

    @pytest.mark.filterwarnings("ignore:overflow")
    def test_failed_pass_does_not_update(self, rng):
        layer = BatchNorm(3)
        layer.params["log_gamma"] = [800.0, 0.0, 0.0]     # exp overflows: the result is inf
        with pytest.raises(ValueError, match="not finite"):
            layer.inverse(_data(rng))
        np.testing.assert_array_equal(layer.buffers["running_mean"], np.zeros(3))
        np.testing.assert_array_equal(layer.buffers["running_var"], np.ones(3))

    @pytest.mark.parametrize("direction", ["forward", "forward_vjp"])
    def test_forward_in_training_mode_raises(self, rng, direction):
        layer = BatchNorm(3)
        with pytest.raises(ValueError, match=r"BatchNorm\.forward: .*\.eval\(\)"):
            getattr(layer, direction)(rng.normal(size=(4, 3)))
        with pytest.raises(ValueError, match=r"\.eval\(\)"):
            Inverse(layer).inverse(rng.normal(size=(4, 3)))

    def test_log_det_term_of_the_pullback(self, rng):
        # With z_bar = 0 only the log-det's dependence on the batch variance is left:
        # x_bar = -S xhat r / N, the term plain batch-norm backward does not have.
        x = _data(rng, n=6)
        layer = _random_batchnorm(rng)
        _, _, pullback = layer.inverse_vjp(x)
        log_det_bar = rng.normal(size=6)
        x_bar, grads = pullback(np.zeros((6, 3)), log_det_bar)
        m, v = x.mean(axis=0), x.var(axis=0)
        r = 1.0 / np.sqrt(v + 1e-5)
        s = log_det_bar.sum()
        np.testing.assert_allclose(x_bar, -s * (x - m) * r * r / 6, rtol=RTOL_EXACT)
        np.testing.assert_allclose(grads["log_gamma"], np.full(3, s), rtol=RTOL_EXACT)
        np.testing.assert_array_equal(grads["beta"], np.zeros(3))

    def test_oracle_vjp_training(self, rng):
        # The batch statistics couple the rows; check_vjp perturbs every element of x (and the
        # running statistics it changes on each call must not matter).
        layer = _random_batchnorm(rng)
        x = _data(rng, n=7)
        assert_vjp(layer.inverse_vjp, x, layer.params, rng=0)
        assert layer.training

    def test_pullback_unaffected_by_later_updates(self, rng):
        layer = _random_batchnorm(rng)
        x = _data(rng, n=5)
        _, _, pullback = layer.inverse_vjp(x)
        z_bar, ld_bar = rng.normal(size=(5, 3)), rng.normal(size=5)
        first = pullback(z_bar, ld_bar)
        layer.inverse(_data(rng, n=5) * 3.0)              # moves the running statistics
        layer.params["log_gamma"] = [1.0, 2.0, 3.0]      # an optimizer step
        second = pullback(z_bar, ld_bar)
        np.testing.assert_array_equal(first[0], second[0])
        for key in first[1]:
            np.testing.assert_array_equal(first[1][key], second[1][key])


class TestBatchNormEval:
    def test_train_eval_switch(self):
        layer = BatchNorm(2)
        assert layer.eval() is layer and not layer.training
        assert layer.train() is layer and layer.training
        assert layer.train(False) is layer and not layer.training

    def test_eval_uses_running_statistics(self, rng):
        layer = _random_batchnorm(rng).eval()
        rm, rv = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
        lg, beta = layer.params["log_gamma"].copy(), layer.params["beta"].copy()
        x = _data(rng, n=9)
        z, log_det = layer.inverse(x)
        np.testing.assert_allclose(z, (x - rm) / np.sqrt(rv + 1e-5) * np.exp(lg) + beta, rtol=RTOL_EXACT)
        np.testing.assert_allclose(log_det, np.full(9, (lg - 0.5 * np.log(rv + 1e-5)).sum()),
                                   rtol=RTOL_EXACT)
        x2, ld_f = layer.forward(z)
        np.testing.assert_allclose(x2, x, rtol=RTOL_EXACT)
        np.testing.assert_array_equal(ld_f, -log_det)
        # Eval passes leave the running statistics alone.
        np.testing.assert_array_equal(layer.buffers["running_mean"], rm)
        np.testing.assert_array_equal(layer.buffers["running_var"], rv)

    def test_rows_are_independent_in_eval_mode(self, rng):
        layer = _random_batchnorm(rng).eval()
        x = _data(rng, n=6)
        z, _ = layer.inverse(x)
        z_first, _ = layer.inverse(x[:1])
        np.testing.assert_array_equal(z[:1], z_first)

    def test_training_then_eval(self, rng):
        layer = BatchNorm(3, momentum=1.0)
        x = _data(rng)
        z_train, ld_train = layer.inverse(x)
        z_eval, ld_eval = layer.eval().inverse(x)   # running = this batch's statistics
        np.testing.assert_allclose(z_eval, z_train, rtol=RTOL_EXACT, atol=ATOL_MEAN)
        np.testing.assert_allclose(ld_eval, ld_train, rtol=RTOL_EXACT)

    def test_oracle_bijector(self, rng):
        layer = _random_batchnorm(rng).eval()
        assert_bijector(layer.forward, layer.inverse, rng.normal(size=(6, 3)))

    @pytest.mark.parametrize("direction", ["forward_vjp", "inverse_vjp"])
    def test_oracle_vjp(self, rng, direction):
        layer = _random_batchnorm(rng).eval()
        assert_vjp(getattr(layer, direction), rng.normal(size=(5, 3)), layer.params, rng=0)

    def test_empty_batch_forward(self):
        layer = BatchNorm(2).eval()
        x, log_det, pullback = layer.forward_vjp(np.zeros((0, 2)))
        assert x.shape == (0, 2) and log_det.shape == (0,)
        z_bar, grads = pullback(np.zeros((0, 2)), np.zeros(0))
        assert z_bar.shape == (0, 2) and all(np.array_equal(g, np.zeros(2)) for g in grads.values())

    def test_single_point(self, rng):
        layer = _random_batchnorm(rng).eval()
        z = rng.normal(size=3)
        x, log_det = layer.forward(z)
        assert x.shape == (3,) and np.ndim(log_det) == 0
        np.testing.assert_allclose(layer.inverse(x)[0], z, rtol=RTOL_EXACT)

    def test_chain_sees_mode_and_buffers(self, rng):
        layer = BatchNorm(3)
        chain = Chain([layer])
        view = chain.buffers["layers.0.running_mean"]
        x = _data(rng)
        chain.inverse(x)
        np.testing.assert_allclose(view, 0.1 * x.mean(axis=0), rtol=RTOL_EXACT)
        chain.eval()
        assert not layer.training
        chain.forward(rng.normal(size=(2, 3)))       # allowed now

    @pytest.mark.parametrize("training", [True, False])
    def test_float32_in_float32_out(self, rng, training):
        layer = _random_batchnorm(rng).train(training)
        x = _data(rng, n=8)
        z32, ld32, pullback = layer.inverse_vjp(x.astype(np.float32))
        assert z32.dtype == np.float32 and ld32.dtype == np.float32
        assert layer.buffers["running_mean"].dtype == np.float64
        x_bar, grads = pullback(np.ones((8, 3), np.float32), np.ones(8, np.float32))
        assert x_bar.dtype == np.float32
        assert all(g.dtype == np.float64 for g in grads.values())
        layer.eval()
        z64, _ = layer.inverse(x.astype(np.float32).astype(np.float64))
        z32, _ = layer.inverse(x.astype(np.float32))
        np.testing.assert_allclose(z32, z64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
        x32, ld_f32 = layer.forward(z32)
        assert x32.dtype == np.float32 and ld_f32.dtype == np.float32


class TestBatchNormConstructor:
    @pytest.mark.parametrize("kwargs, problem", [
        ({"dim": 0}, "dim"),
        ({"dim": 2, "momentum": 0.0}, "momentum"),
        ({"dim": 2, "momentum": 1.5}, "momentum"),
        ({"dim": 2, "momentum": -0.1}, "momentum"),
        ({"dim": 2, "momentum": float("nan")}, "momentum"),
        ({"dim": 2, "momentum": "0.1"}, "momentum"),
        ({"dim": 2, "momentum": True}, "momentum"),
        ({"dim": 2, "eps": 0.0}, "eps"),
        ({"dim": 2, "eps": -1e-5}, "eps"),
        ({"dim": 2, "eps": float("inf")}, "eps"),
        ({"dim": 2, "eps": None}, "eps"),
    ])
    def test_bad_arguments(self, kwargs, problem):
        with pytest.raises(ValueError, match=f"BatchNorm: {problem}"):
            BatchNorm(**kwargs)

    def test_options_are_keyword_only(self):
        with pytest.raises(TypeError):
            BatchNorm(2, 0.1)

    def test_repr(self):
        assert repr(BatchNorm(2, momentum=0.5, eps=1e-3)) == "BatchNorm(dim=2, momentum=0.5, eps=0.001)"


class TestStateCommitsOnlyOnSuccess:
    """Running statistics and ActNorm's initialisation change only when the whole public call
    succeeds: a failure in a later layer of a Chain, or a non-finite loss, changes nothing."""

    def _layers(self):
        return ActNorm(2), BatchNorm(2)

    def _state(self, *layers):
        return [{k: v.copy() for k, v in {**l.params, **l.buffers}.items()} for l in layers]

    def test_failure_in_a_later_layer_of_a_chain(self):
        actnorm, batchnorm = self._layers()
        # inverse runs the list backwards: BatchNorm and ActNorm first, then Exp's inverse fails
        chain = Chain([Exp(2), batchnorm, actnorm])
        before = self._state(actnorm, batchnorm)
        with pytest.raises(ValueError, match="Exp.inverse"):
            chain.inverse(np.random.default_rng(0).normal(size=(5, 2)))
        with pytest.raises(ValueError, match="Exp.inverse"):
            chain.inverse_vjp(np.random.default_rng(0).normal(size=(5, 2)))
        for layer_before, layer_after in zip(before, self._state(actnorm, batchnorm)):
            for key in layer_before:
                np.testing.assert_array_equal(layer_after[key], layer_before[key])
        assert not actnorm.buffers["initialized"]

    def test_success_commits_once(self):
        actnorm, batchnorm = self._layers()
        chain = Chain([actnorm, batchnorm])   # inverse: BatchNorm sees x, then ActNorm
        x = np.random.default_rng(1).normal(size=(6, 2))
        chain.inverse(x)
        assert actnorm.buffers["initialized"]
        np.testing.assert_allclose(batchnorm.buffers["running_mean"], 0.1 * x.mean(axis=0), rtol=1e-12)

    def test_flow_nll_with_non_finite_loss_changes_nothing(self):
        _, batchnorm = self._layers()
        actnorm = ActNorm(2, initialized=True)
        actnorm.params["log_scale"] = [-360.0, 0.0]   # z = x * e^360: finite, but |z|^2 overflows
        flow = Flow(StandardNormal(2), Chain([actnorm, batchnorm]))
        x = np.random.default_rng(2).normal(size=(4, 2))
        before = self._state(actnorm, batchnorm)
        with pytest.raises(ValueError, match="not finite"):
            flow.nll_and_grad(x)
        for layer_before, layer_after in zip(before, self._state(actnorm, batchnorm)):
            for key in layer_before:
                np.testing.assert_array_equal(layer_after[key], layer_before[key])
