"""The BLAS thread policy (refflow.kernels.threads): one thread for small work, the user's
setting left alone, results independent of it.

The counts in effect are observed from inside the passes: the flow's bijector ``_run`` is
wrapped on the instance to read ``threadpoolctl.threadpool_info()`` at every pass.
"""

import os

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from refflow import NSF, fit  # noqa: E402
from refflow.datasets import two_moons  # noqa: E402
from refflow.kernels import threads  # noqa: E402


def blas_counts():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"]


def large_counts():
    """The counts the policy sets for large work: every CPU for NumPy's BLAS, 1 for another
    library (SciPy's wheels' own OpenBLAS)."""
    paths = [lib["filepath"] for lib in threadpoolctl.threadpool_info()
             if lib["user_api"] == "blas"]
    return threads.library_limits(threads.cpus(), paths)


@pytest.fixture
def clean_env(monkeypatch):
    """No thread variable set, BLAS libraries at their default count, >= 2 CPUs (else the
    policy's one thread could not be told from the default)."""
    for var in threads.BLAS_VARS + ("REFFLOW_BLAS_THREADS", "REFFLOW_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    counts = blas_counts()
    if not counts:
        pytest.skip("no BLAS library visible to threadpoolctl")
    if threads.cpus() < 2:
        pytest.skip("one CPU: one BLAS thread is the default")
    if any(c != threads.cpus() for c in counts):
        pytest.skip(f"the BLAS libraries do not run their default count here ({counts})")
    return monkeypatch


def small_flow():
    return NSF(2, n_layers=2, hidden=(16, 16), rng=0)


def record_passes(flow):
    """Wrap ``flow.bijector._run`` to record the BLAS counts in effect during each pass."""
    seen = []
    run = flow.bijector._run

    def recording(*args, **kwargs):
        seen.append(blas_counts())
        return run(*args, **kwargs)

    flow.bijector._run = recording
    return seen


def data(n=64):
    return two_moons(n, noise=0.1, rng=np.random.default_rng(1))


def test_blas_limit_rule():
    cpus = threads.cpus()
    small, large = threads.SMALL_WORK - 1, threads.SMALL_WORK
    assert threads.blas_limit(small, environ={}, current=[cpus, cpus]) == 1
    assert threads.blas_limit(large, environ={}, current=[cpus]) == cpus
    assert threads.blas_limit(large, environ={"REFFLOW_NUM_THREADS": "1"}, current=[cpus]) == 1
    for var in threads.BLAS_VARS:
        assert threads.blas_limit(small, environ={var: "4"}, current=[cpus]) is None
    assert threads.blas_limit(small, environ={"REFFLOW_BLAS_THREADS": "off"},
                              current=[cpus]) is None
    assert threads.blas_limit(small, environ={"REFFLOW_BLAS_THREADS": "3"}, current=[cpus]) == 3
    assert threads.blas_limit(small, environ={"REFFLOW_BLAS_THREADS": "auto"},
                              current=[cpus]) == 1
    # a count that is not the default was set by the user: left alone
    assert threads.blas_limit(small, environ={}, current=[cpus, cpus + 1]) is None
    assert threads.blas_limit(large, environ={"REFFLOW_BLAS_THREADS": "2"},
                              current=[cpus + 1]) is None
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="REFFLOW_BLAS_THREADS"):
            threads.blas_limit(small, environ={"REFFLOW_BLAS_THREADS": bad}, current=[cpus])


def test_largest_weight():
    assert threads.largest_weight([np.zeros(7), np.zeros((3, 4)), np.zeros((2, 5))]) == 12
    assert threads.largest_weight([np.zeros(7)]) == 0
    flow = small_flow()
    assert threads.largest_weight(flow.params.values()) == max(
        a.size for a in flow.params.values() if a.ndim == 2)


def test_small_model_runs_one_blas_thread(clean_env):
    flow = small_flow()
    seen = record_passes(flow)
    x = data()
    flow.nll_and_grad(x)
    flow.log_prob(x)
    flow.sample(16, rng=0)
    assert len(seen) == 3
    assert all(counts and set(counts) == {1} for counts in seen), seen
    assert blas_counts() == [threads.cpus()] * len(blas_counts())  # restored after each call


def test_fit_steps_run_one_blas_thread_and_callback_the_users(clean_env):
    flow = small_flow()
    seen = record_passes(flow)
    in_callback = []
    fit(flow, data(), epochs=2, batch_size=32, rng=0, progress=False,
        callback=lambda epoch, history: in_callback.append(blas_counts()))
    assert len(seen) >= 4 and all(set(counts) == {1} for counts in seen), seen
    assert in_callback == [[threads.cpus()] * len(blas_counts())] * 2
    assert set(blas_counts()) == {threads.cpus()}


def test_large_work_takes_refflow_num_threads(clean_env):
    # every call counts as large; REFFLOW_NUM_THREADS=1 bounds the BLAS as it bounds numba
    clean_env.setattr(threads, "SMALL_WORK", 1)
    clean_env.setenv("REFFLOW_NUM_THREADS", "1")
    flow = small_flow()
    seen = record_passes(flow)
    flow.log_prob(data())
    assert set(seen[0]) == {1}
    clean_env.delenv("REFFLOW_NUM_THREADS")
    flow.log_prob(data())
    assert seen[1] == large_counts() and threads.cpus() in seen[1]
    assert set(blas_counts()) == {threads.cpus()}           # restored


def test_only_numpys_blas_takes_threads():
    """With two BLAS libraries (NumPy's and SciPy's wheels each bring an OpenBLAS), large
    work gives NumPy's its threads and the other one; one library, or a limit of 1, is given
    the limit as it is."""
    import numpy

    root = os.path.dirname(os.path.realpath(numpy.__file__))
    ours, other = os.path.join(root + ".libs", "libopenblas64_.so"), "/opt/lib/libopenblas.so"
    assert threads.library_limits(4, [other, ours]) == [1, 4]
    assert threads.library_limits(4, [os.path.join(root, ".dylibs", "libblas.dylib"),
                                      other]) == [4, 1]
    assert threads.library_limits(4, [other]) == [4]
    assert threads.library_limits(1, [other, ours]) == [1, 1]
    # several libraries, none of them NumPy's: which one runs the products is unknown
    assert threads.library_limits(4, [other, "/opt/lib/libmkl_rt.so"]) == [1, 1]
    assert threads.library_limits(2, []) == []


@pytest.mark.parametrize("var", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_users_variable_is_respected(clean_env, var):
    # the libraries are loaded already, so the variable does not change their count: only
    # refflow reading it keeps the default count in effect during the pass
    clean_env.setenv(var, str(threads.cpus()))
    flow = small_flow()
    seen = record_passes(flow)
    flow.nll_and_grad(data())
    assert set(seen[0]) == {threads.cpus()}


def test_refflow_blas_threads_option(clean_env):
    flow = small_flow()
    seen = record_passes(flow)
    clean_env.setenv("REFFLOW_BLAS_THREADS", "off")
    flow.log_prob(data())
    clean_env.setenv("REFFLOW_BLAS_THREADS", str(threads.cpus()))
    flow.log_prob(data())
    clean_env.setenv("REFFLOW_BLAS_THREADS", "1")
    flow.log_prob(data())
    assert [set(s) for s in seen] == [{threads.cpus()}, {threads.cpus()}, {1}]
    clean_env.setenv("REFFLOW_BLAS_THREADS", "many")
    with pytest.raises(ValueError, match="REFFLOW_BLAS_THREADS must be"):
        flow.log_prob(data())
    assert set(blas_counts()) == {threads.cpus()}


def test_users_threadpool_limits_is_respected(clean_env):
    flow = small_flow()
    seen = record_passes(flow)
    # the user's own limit above the default: refflow's policy would pick 1 for this model
    with threadpoolctl.threadpool_limits(limits=threads.cpus() + 1, user_api="blas"):
        user = blas_counts()
        flow.nll_and_grad(data())
        fit(flow, data(), epochs=1, batch_size=32, rng=0, progress=False)
        assert blas_counts() == user
    assert set(user) == {threads.cpus() + 1}
    assert all(counts == user for counts in seen), seen
    # the user's limit of 1 on work refflow counts as large
    clean_env.setattr(threads, "SMALL_WORK", 1)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        flow.log_prob(data())
    assert set(seen[-1]) == {1}


def test_restored_when_the_call_raises(clean_env):
    flow = small_flow()
    seen = record_passes(flow)
    x = data()
    x[0, 0] = np.inf
    with pytest.raises(ValueError):
        flow.nll_and_grad(x)
    assert set(blas_counts()) == {threads.cpus()}
    assert not seen or set(seen[0]) == {1}


def test_seeded_fit_bitwise_the_same_with_and_without_the_policy(clean_env):
    """One BLAS thread (the policy, for this small model) and the default count give the same
    parameters bit for bit: OpenBLAS splits a product's rows and columns among its threads,
    never the inner sum, so each entry is computed alike. The products are 256 x 64 by 64 x 64,
    above OpenBLAS's own size for threading, so the default count does run two threads."""
    x = two_moons(2000, noise=0.1, rng=np.random.default_rng(0))

    def fitted():
        flow = NSF(2, n_layers=3, hidden=(64, 64), rng=0)
        seen = record_passes(flow)
        history = fit(flow, x, epochs=2, batch_size=256, rng=0, progress=False)
        del flow.bijector._run  # the class's method again
        return flow, history, seen

    with_policy, h1, seen1 = fitted()
    clean_env.setenv("REFFLOW_BLAS_THREADS", "off")
    without, h2, seen2 = fitted()
    # one thread against the default count, in every pass
    assert {tuple(s) for s in seen1} == {(1,) * len(seen1[0])}
    assert {tuple(s) for s in seen2} == {(threads.cpus(),) * len(seen2[0])}
    assert h1.train_nll == h2.train_nll and h1.val_nll == h2.val_nll
    for key, value in with_policy.params.items():
        np.testing.assert_array_equal(value, without.params[key], err_msg=key)
    z = np.random.default_rng(2).standard_normal((500, 2))
    clean_env.delenv("REFFLOW_BLAS_THREADS")
    a = with_policy.log_prob(z)
    clean_env.setenv("REFFLOW_BLAS_THREADS", "off")
    np.testing.assert_array_equal(a, with_policy.log_prob(z))
