"""Lazy scoring and sampling over dask arrays: bitwise equal to NumPy, independent of the
scheduler and of the number of workers; ``import refflow`` does not import dask."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from refflow import (BatchNorm, Chain, Flow, MaskedAffineAutoregressive, StandardNormal, fit,
                     load)
from refflow._exact import exact_mean
from refflow.estimator import FlowDensity

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

FAST = dict(n_layers=2, hidden=(16, 16), epochs=2, random_state=0, progress=False)


def same_params(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_import_refflow_does_not_import_dask():
    code = ("import sys, refflow, refflow.estimator, refflow.training.loop; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'));"
            " assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    mix = np.array([[2.0, 0.5, 0.0], [0.0, 0.3, 0.1], [0.0, 0.0, 40.0]])
    return rng.normal(size=(3000, 3)) @ mix + [5.0, -1.0, 300.0]


@pytest.fixture(scope="module")
def model(data):
    return FlowDensity("maf", **FAST).fit(data)


@pytest.fixture(scope="module")
def conditional(data):
    context = np.random.default_rng(12).normal(size=(data.shape[0], 2))
    return FlowDensity("maf", **FAST).fit(data + context @ [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
                                          context=context), context


@pytest.fixture(scope="module")
def points(data):
    rng = np.random.default_rng(13)
    return data[rng.integers(0, data.shape[0], 5000)] + rng.normal(size=(5000, 3))


# ------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("chunks", [5000, 1000, 777, (3000, 1500, 500)])
def test_score_samples_of_a_dask_array_is_the_numpy_result_bitwise(model, points, chunks):
    lazy = model.score_samples(da.from_array(points, chunks=(chunks, 3)))
    assert isinstance(lazy, da.Array) and lazy.shape == (5000,)
    computed = lazy.compute()
    assert computed.dtype == np.float64
    assert np.array_equal(computed, model.score_samples(points))


def test_score_of_a_dask_array_is_the_correctly_rounded_mean(model, points):
    lazy = model.score(da.from_array(points, chunks=(900, 3)))
    assert isinstance(lazy, da.Array) and lazy.shape == ()
    eager = model.score(points)
    assert float(lazy.compute()) == eager == exact_mean(model.score_samples(points))


def test_flow_log_prob_of_a_dask_array_is_the_numpy_result_bitwise(model, points):
    flow = model.flow_
    for x in (points, points.astype(np.float32)):
        lazy = flow.log_prob(da.from_array(x, chunks=(1200, 1)))   # columns are rechunked
        computed = lazy.compute(scheduler="sync")
        assert computed.dtype == x.dtype
        assert np.array_equal(computed, flow.log_prob(x))


def test_conditional_contexts_dask_numpy_and_shared(conditional, points):
    model, _ = conditional
    context = np.random.default_rng(14).normal(size=(points.shape[0], 2))
    x = da.from_array(points, chunks=(1500, 3))
    ref = model.score_samples(points, context=context)
    for c in (context, da.from_array(context, chunks=(1000, 2))):   # unaligned chunks too
        assert np.array_equal(model.score_samples(x, context=c).compute(), ref)
    with pytest.raises(ValueError, match="expected a context of shape"):
        model.score_samples(x, context=np.array([0.5, -1.0]))   # as the NumPy path
    flow = model.flow_
    cs = (context - model.context_mean_) / model.context_scale_
    assert np.array_equal(flow.log_prob(x, da.from_array(cs, chunks=700)).compute(),
                          flow.log_prob(points, cs))
    shared = cs[17]                                                # Flow: one shared row
    assert np.array_equal(flow.log_prob(x, shared).compute(), flow.log_prob(points, shared))


def test_the_model_is_in_the_graph_once_and_as_it_was(data, points):
    model = FlowDensity("maf", **FAST).fit(data)
    ref = model.score_samples(points)
    x = da.from_array(points, chunks=(500, 3))                     # 10 chunks
    lazy = model.score_samples(x)
    graph = dict(lazy.__dask_graph__())
    holders = [k for k, v in graph.items() if isinstance(v, FlowDensity)
               or isinstance(getattr(v, "value", None), FlowDensity)]
    assert len(holders) == 1
    assert len(graph) == 10 + 10 + 1                                # input, tasks, the model
    last = len(model.flow_.bijector.layers) - 1                      # the Affine (whitening before)
    model.flow_.params[f"bijector.layers.{last}.shift"][...] += 1.0  # after the graph was built
    assert np.array_equal(lazy.compute(), ref)


def test_out_of_range_rows_are_minus_inf_as_in_numpy(model, points):
    far = points.copy()
    far[[3, 2500]] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = model.score_samples(far)
        lazy = model.score_samples(da.from_array(far, chunks=(1000, 3))).compute(
            scheduler="sync")
    assert np.isneginf(ref[[3, 2500]]).all()
    assert np.array_equal(lazy, ref)


def test_bad_dask_input_raises_before_any_work(model, conditional, points):
    with pytest.raises(ValueError, match="score_samples: expected X of shape"):
        model.score_samples(da.from_array(points[:, :2], chunks=100))
    with pytest.raises(ValueError, match="must be 2-D"):
        model.score_samples(da.from_array(points[:, 0], chunks=100))
    unknown = da.from_array(points, chunks=100)
    unknown = unknown[unknown[:, 0] > 0]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        model.score_samples(unknown)
    with pytest.raises(ValueError, match="unconditional"):
        model.score_samples(da.from_array(points, chunks=100), context=points)
    cmodel, _ = conditional
    with pytest.raises(ValueError, match="conditional"):
        cmodel.score_samples(da.from_array(points, chunks=100))
    with pytest.raises(ValueError, match="rows"):
        cmodel.score_samples(da.from_array(points, chunks=100), context=np.zeros((7, 2)))


def test_a_batch_coupled_flow_refuses_several_chunks():
    flow = Flow(StandardNormal(2), Chain([MaskedAffineAutoregressive(2, hidden=(4,), rng=0),
                                          BatchNorm(2)]))
    x = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.raises(ValueError, match="training mode"):
        flow.log_prob(da.from_array(x, chunks=10))
    assert np.array_equal(flow.log_prob(da.from_array(x, chunks=40)).compute(), flow.log_prob(x))


# ------------------------------------------------------------------------------ sampling
def test_lazy_samples_follow_the_documented_seeds(model):
    lazy = model.sample(2500, random_state=7, chunks=1000)
    assert isinstance(lazy, da.Array) and lazy.chunks == ((1000, 1000, 500), (3,))
    seeds = np.random.SeedSequence(7).spawn(3)
    expected = np.concatenate([model.sample(k, np.random.default_rng(s))
                               for k, s in zip((1000, 1000, 500), seeds)])
    assert np.array_equal(lazy.compute(scheduler="sync"), expected)
    # the same seed gives the same samples; a Generator seeds as four 32-bit draws
    assert np.array_equal(model.sample(2500, random_state=7, chunks=(1000, 1000, 500))
                          .compute(), expected)
    gen = np.random.default_rng(3)
    root = np.random.SeedSequence(np.random.default_rng(3).integers(0, 2 ** 32, 4,
                                                                     dtype=np.uint64))
    assert np.array_equal(model.sample(600, gen, chunks=600).compute(),
                          model.sample(600, np.random.default_rng(root.spawn(1)[0])))


def test_lazy_conditional_samples(conditional):
    model, _ = conditional
    rows = np.random.default_rng(5).normal(size=(1200, 2))
    seeds = np.random.SeedSequence(1).spawn(2)
    expected = np.concatenate([model.sample(600, np.random.default_rng(s),
                                            context=rows[600 * i:600 * (i + 1)])
                               for i, s in enumerate(seeds)])
    for context in (rows, da.from_array(rows, chunks=(500, 2))):
        got = model.sample(1200, 1, context=context, chunks=600).compute()
        assert np.array_equal(got, expected)
    shared = np.array([1.0, -2.0])
    got = model.sample(1200, 1, context=shared, chunks=600).compute()
    assert np.array_equal(got, np.concatenate([
        model.sample(600, np.random.default_rng(s), context=shared) for s in seeds]))


def test_bad_chunks_raise(model):
    with pytest.raises(ValueError, match="chunks must be a positive int"):
        model.sample(10, 0, chunks=0)
    with pytest.raises(ValueError, match="summing to n_samples=10"):
        model.sample(10, 0, chunks=(4, 4))
    with pytest.raises(TypeError, match="chunks must be an int or a tuple"):
        model.sample(10, 0, chunks=2.5)
    with pytest.raises(ValueError, match="non-negative int"):
        model.sample(10, -1, chunks=5)


# ------------------------------------------------------------- schedulers and a cluster
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_samples_do_not_depend_on_the_scheduler_or_the_workers(model, client):
    lazy = model.sample(4000, random_state=2026, chunks=700)
    one = lazy.compute(scheduler="sync")
    threads = lazy.compute(scheduler="threads", num_workers=2)
    assert len(client.scheduler_info()["workers"]) == 2
    cluster = client.compute(lazy).result()
    assert np.array_equal(one, threads) and np.array_equal(one, cluster)
    assert np.isfinite(one).all() and one.shape == (4000, 3)


def test_scoring_on_two_worker_processes_is_the_numpy_result(model, points, client):
    lazy = model.score_samples(da.from_array(points, chunks=(1000, 3)))
    assert np.array_equal(client.compute(lazy).result(), model.score_samples(points))
    flow_lazy = model.flow_.log_prob(da.from_array(points, chunks=(1000, 3)))
    assert np.array_equal(client.compute(flow_lazy).result(), model.flow_.log_prob(points))


# ----------------------------------------------------------------------- command line
def run_cli(argv):
    from refflow.__main__ import main

    lines = []
    return main(argv, out=lines.append), "\n".join(lines)


@pytest.fixture(scope="module")
def files(model, points, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask_cli")
    model_path, data_path = folder / "model.npz", folder / "points.npy"
    model.save(model_path)
    far = points.copy()
    far[[10, 4321]] = 1e300                                        # scored -inf
    np.save(data_path, far)
    return folder, model_path, data_path, far


@pytest.mark.parametrize("scheduler", [None, "sync", "cluster"])
def test_cli_score_dask_writes_the_numpy_scores(files, client, scheduler):
    folder, model_path, data_path, far = files
    out = folder / f"scores-{scheduler}.npy"
    argv = ["score", str(model_path), str(data_path), "--dask", "--chunk-rows", "1500",
            "-o", str(out)]
    if scheduler is not None:
        argv += ["--scheduler", client.scheduler.address if scheduler == "cluster"
                 else scheduler]
    status, text = run_cli(argv)
    assert status == 0, text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = load(model_path).score_samples(far)
    assert np.array_equal(np.load(out), ref)
    assert "in 4 chunks of up to 1500 rows" in text and "2 points outside" in text
    finite = ref[np.isfinite(ref)]
    assert f"min {finite.min():.4f}  max {finite.max():.4f}" in text
    assert not [p for p in folder.iterdir() if p.name.startswith(".score-")]   # no temporary


def test_cli_score_dask_refuses_what_it_cannot_do(files, capsys, monkeypatch):
    folder, model_path, data_path, _ = files
    from refflow import __main__
    from refflow.__main__ import main

    monkeypatch.setattr(__main__, "SCHEDULER_TIMEOUT", "1s")

    for argv, fragment in (
            (["-o", str(folder / "s.csv")], "must be a .npy file"),
            (["--columns", "0,1"], "--columns cannot be used"),
            (["--scheduler", "tcp://127.0.0.1:1"], "cannot connect")):
        assert main(["score", str(model_path), str(data_path), "--dask", *argv]) == 1
        assert fragment in capsys.readouterr().err
    np.save(folder / "wrong.npy", np.zeros((5, 2)))
    assert main(["score", str(model_path), str(folder / "wrong.npy"), "--dask"]) == 1
    assert "the model scores rows of 3 features" in capsys.readouterr().err
    assert main(["score", str(model_path), str(data_path), "--chunk-rows", "5"]) == 1
    assert "go with --dask" in capsys.readouterr().err


# ------------------------------------------------------------- data-parallel training
# Sharded sums differ from one pass only by rounding: the per-shard means are rescaled by
# n_i / n and added, a few ulps of each gradient element; 1e-12 leaves 10^3 ulps of room.
RTOL_SHARDED = 1e-12


def relative(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(float).tiny)


def flows_pair(context_dim=None):
    from refflow import MAF

    return [MAF(3, n_layers=2, hidden=(16,), rng=1, context_dim=context_dim) for _ in range(2)]


@pytest.mark.parametrize("conditional", [False, True])
def test_sharded_gradient_is_the_single_process_gradient(data, client, conditional):
    from refflow.training.distributed import ShardedGradient

    flow, _ = flows_pair(2 if conditional else None)
    x = (data[:257] - data.mean(axis=0)) / data.std(axis=0)
    c = np.random.default_rng(1).normal(size=(257, 2)) if conditional else None
    nll, grads = flow.nll_and_grad(x, c)
    for shards in (2, 3, 257):
        sharded = ShardedGradient(client, flow, shards)
        s_nll, s_grads = sharded(x, c)
        sharded.close()
        assert abs(s_nll - nll) <= RTOL_SHARDED * abs(nll)
        assert s_grads.keys() == grads.keys()
        assert all(relative(s_grads[k], grads[k]) <= RTOL_SHARDED for k in grads)


@pytest.mark.parametrize("conditional", [False, True])
def test_fit_with_a_client_is_the_single_process_fit(data, client, conditional):
    x = (data[:1500] - data.mean(axis=0)) / data.std(axis=0)
    c = np.random.default_rng(2).normal(size=(1500, 2)) if conditional else None
    one, many = flows_pair(2 if conditional else None)
    h1 = fit(one, x, context=c, epochs=2, batch_size=200, rng=4, progress=False)
    h2 = fit(many, x, context=c, epochs=2, batch_size=200, rng=4, progress=False, client=client)
    assert h1.n_steps == h2.n_steps == 14                    # 1350 rows: 7 batches per epoch
    assert all(relative(many.params[k], one.params[k]) <= RTOL_SHARDED for k in one.params)
    assert np.allclose(h1.train_nll, h2.train_nll, rtol=RTOL_SHARDED, atol=0)


def test_a_killed_worker_mid_fit_is_retried(data, client):
    x = (data[:1500] - data.mean(axis=0)) / data.std(axis=0)
    calm, killed = flows_pair()
    fit(calm, x, epochs=3, batch_size=200, rng=4, progress=False, client=client, n_shards=3)

    victims = []

    def kill_one(epoch, history):
        if epoch == 0:
            victim = sorted(client.scheduler_info()["workers"])[0]
            victims.append(victim)
            try:
                client.run(os._exit, 1, workers=[victim])
            except Exception:                      # the worker died answering
                pass

    fit(killed, x, epochs=3, batch_size=200, rng=4, progress=False, client=client, n_shards=3,
        callback=kill_one)
    # the shards do not depend on which worker runs them: the very same parameters
    assert same_params(calm.params, killed.params)
    client.wait_for_workers(2, timeout=60)        # the nanny restarts it for later tests
    assert victims and victims[0] not in client.scheduler_info()["workers"]   # it did die


class FailsAfterFirstStep(Flow):
    """A flow whose gradient fails in a worker once its parameters moved (a task failure)."""

    def nll_and_grad(self, x, context=None):
        if os.getpid() != self.driver_pid and not same_params(self.params, self.initial):
            raise RuntimeError("worker-side failure")
        return super().nll_and_grad(x, context)


def test_a_failing_step_raises_a_clear_error_and_keeps_the_last_step(data, client):
    from refflow import MAF, Adam
    from refflow.training.distributed import ClusterError

    x = (data[:1500] - data.mean(axis=0)) / data.std(axis=0)
    inner = MAF(3, n_layers=2, hidden=(16,), rng=1)
    flow = FailsAfterFirstStep(inner.base, inner.bijector)
    flow.driver_pid = os.getpid()
    flow.initial = {k: v.copy() for k, v in flow.params.items()}
    with pytest.raises(ClusterError, match=r"fit: data-parallel step 1 failed on the cluster "
                                           r"\(3 attempts, each shard task retried 2 times\): "
                                           r"RuntimeError: worker-side failure"):
        fit(flow, x, epochs=1, batch_size=200, rng=4, progress=False, client=client)
    # exactly one complete step stands, none half-updated: the first step of fit by hand (the
    # documented use of rng: split permutation, then the epoch's order; Adam's first step)
    reference, _ = flows_pair()
    gen = np.random.default_rng(4)
    perm = gen.permutation(1500)
    x_train = x[perm[150:]]
    first = x_train[gen.permutation(1350)[:200]]
    Adam(reference.params, lr=1e-3).step(reference.nll_and_grad(first)[1])
    assert all(relative(flow.params[k], reference.params[k]) <= RTOL_SHARDED
               for k in reference.params)
    assert not same_params(flow.params, flow.initial)


def test_client_refusals(data, client):
    from refflow import MAF

    x = (data[:300] - data.mean(axis=0)) / data.std(axis=0)
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        fit(MAF(3, n_layers=1, hidden=(8,), rng=0), x, epochs=1, progress=False, client=object())
    batch_norm = Flow(StandardNormal(3), Chain([MaskedAffineAutoregressive(3, hidden=(8,),
                                                                           rng=0), BatchNorm(3)]))
    with pytest.raises(ValueError, match="BatchNorm layer is in training mode"):
        fit(batch_norm, x, epochs=1, progress=False, client=client)
    with pytest.raises(ValueError, match="n_shards goes with client"):
        fit(MAF(3, n_layers=1, hidden=(8,), rng=0), x, epochs=1, progress=False, n_shards=2)
