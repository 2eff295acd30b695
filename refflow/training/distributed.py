"""Data-parallel gradients on a ``dask.distributed`` cluster, for ``fit(..., client=...)``.

Each step's mini-batch of ``n`` rows is cut into ``k`` contiguous shards of ``n_i`` rows (sizes
differing by at most one; ``k`` = the cluster's worker threads unless given); one task per
shard computes ``(nll_i, grads_i) = flow.nll_and_grad(shard)`` on a worker, and the driver
forms the batch's mean and its gradient exactly as the sums they are::

    nll = sum_i n_i nll_i / n,        grad = sum_i n_i grad_i / n

(the hand-derived pullbacks give each shard's exact gradient of its mean NLL; the weighted sum
is the gradient of the batch's mean). Only the rounding differs from one process: a few ulps
per step. The flow is sent to every worker once (``client.scatter(..., broadcast=True)``); the
parameters are broadcast once per step, before its tasks. The shards, and so the result, do
not depend on the number of workers or on which worker runs which shard.

Failures: a task that raises is retried (``RETRIES`` times); a worker that dies has its tasks
rescheduled on the others (dask's own rule); a step that fails all the same (a broadcast to a
worker that just died, say) is run again whole, ``RETRIES`` more times. A step that still
fails raises :class:`ClusterError` naming it; the optimizer steps only once every shard's gradient is in, so
the parameters are those after the last completed step, never half-updated. A ``ValueError``
raised by ``nll_and_grad`` on a shard (a non-finite loss) is passed on as such (``fit`` reports
it as a divergence).

dask is imported by the caller's client only: this module imports nothing of it.
"""

import numbers

import numpy as np

__all__ = ["ClusterError", "ShardedGradient", "shard_nll_and_grad", "RETRIES"]

#: Times a failed shard task is run again, and a failed step tried again, before giving up.
RETRIES = 2


class ClusterError(RuntimeError):
    """A data-parallel step failed on the cluster (after the retries); the parameters are those
    after the last completed step."""


def shard_nll_and_grad(flow, params, x, context):
    """One task: ``(rows, nll, grads)`` of ``flow.nll_and_grad`` on a shard, with ``params``
    (this step's parameters) written into the worker's copy of the flow first."""
    flow_params = flow.params
    for key, value in params.items():
        flow_params[key][...] = value
    nll, grads = flow.nll_and_grad(x, context)
    return x.shape[0], nll, grads


def _coupled_layer(flow):
    """The first layer whose pass depends on the whole batch (sharding would change it)."""
    stack = [flow.bijector]
    while stack:
        layer = stack.pop()
        reason = layer._batch_coupling()
        if reason is not None:
            return type(layer).__name__, reason
        stack.extend(layer._children())
    return None


class ShardedGradient:
    """``(nll, grads)`` of a mini-batch computed in shards on a dask cluster.

    Parameters
    ----------
    client : dask.distributed.Client
    flow : Flow
        In the mode it is trained in (its layers' ``training`` flags are sent with it).
    n_shards : int >= 1, optional
        Shards per step (default: the cluster's worker threads, at least 1).
    where : str
        The caller's name, for errors.
    """

    def __init__(self, client, flow, n_shards=None, where="fit"):
        if not all(hasattr(client, name) for name in ("scatter", "submit", "gather")):
            raise TypeError(f"{where}: client must be a dask.distributed.Client, got "
                            f"{type(client).__name__}")
        coupled = _coupled_layer(flow)
        if coupled is not None:
            raise ValueError(f"{where}: client= splits each batch across workers, but a "
                             f"{coupled[0]} layer {coupled[1]}; its result would change")
        if n_shards is None:
            n_shards = max(1, sum(client.nthreads().values()))
        elif (isinstance(n_shards, bool) or not isinstance(n_shards, numbers.Integral)
              or n_shards < 1):
            raise ValueError(f"{where}: n_shards must be a positive int, got {n_shards!r}")
        self.client, self.flow, self.n_shards, self.where = client, flow, int(n_shards), where
        self.remote_flow = client.scatter(flow, broadcast=True, hash=False)
        self.step_index = 0

    def __call__(self, x, context=None):
        """``(nll, grads)`` of the batch ``x`` (and ``context`` rows), as ``nll_and_grad``."""
        n = x.shape[0]
        k = min(self.n_shards, n)
        bounds = [n * i // k for i in range(k + 1)]
        params = {key: np.array(value) for key, value in self.flow.params.items()}
        for attempt in range(RETRIES + 1):
            try:
                results = self._attempt(x, context, params, bounds)
                break
            except ValueError:
                raise                               # a non-finite loss: fit's divergence
            except Exception as exc:                # a lost worker, a failed task, a comm error
                failure = exc
        else:
            raise ClusterError(
                f"{self.where}: data-parallel step {self.step_index} failed on the cluster "
                f"({RETRIES + 1} attempts, each shard task retried {RETRIES} times): "
                f"{type(failure).__name__}: {failure}. The parameters are those after the "
                f"last completed step") from failure
        self.step_index += 1
        total = sum(rows for rows, _, _ in results)
        nll = sum(rows * value for rows, value, _ in results) / total
        grads = {key: sum(rows * g[key] for rows, _, g in results) / total for key in params}
        return nll, grads

    def _attempt(self, x, context, params, bounds):
        """One try of a step: broadcast the parameters, one task per shard, gather."""
        client, futures = self.client, []
        try:
            # a list: scattering a dict would name the futures by its keys, the same each step
            remote_params = client.scatter([params], broadcast=True, hash=False)[0]
            for a, b in zip(bounds[:-1], bounds[1:]):
                c = None if context is None else context[a:b]
                futures.append(client.submit(shard_nll_and_grad, self.remote_flow,
                                             remote_params, x[a:b], c, pure=False,
                                             retries=RETRIES))
            return client.gather(futures)
        finally:
            for future in futures:
                future.release()

    def close(self):
        """Forget the flow sent to the workers."""
        self.remote_flow.release()
