"""Figures of 2-D densities, samples, pair plots and training histories (matplotlib, optional).

matplotlib is imported inside each function; without it they raise ``ImportError`` with the
install hint ``pip install "refflow[plot]"``. Figures are ``matplotlib.figure.Figure`` objects
with an Agg canvas, never pyplot figures, and nothing here changes matplotlib's global state
(rcParams, the pyplot figure registry, the backend). Every function draws into ``ax`` when one is
given (and returns it) or into a new figure (and returns the figure); :func:`save_figure` writes
either to a file.

Examples
--------
>>> import numpy as np
>>> from refflow import Affine, Flow, StandardNormal
>>> from refflow.plots import plot_density_2d
>>> flow = Flow(StandardNormal(2), Affine(2))
>>> fig = plot_density_2d(flow, resolution=50, samples=flow.sample(100, rng=0), title="N(0, I)")
>>> ax = fig.axes[0]
>>> heat = ax.images[0].get_array()
>>> heat.shape, bool(np.isclose(heat.max(), 1 / (2 * np.pi), rtol=1e-2))
((50, 50), True)
"""

import math
import numbers
import os
from collections.abc import Mapping

import numpy as np

from ._validation import as_float_array, check_int, check_positive, check_rng

__all__ = ["plot_density_2d", "plot_samples", "plot_history", "pair_plot", "save_figure",
           "require_matplotlib", "FIGURE_SUFFIXES"]

#: File suffixes :func:`save_figure` writes (matplotlib's Agg canvas formats).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif",
                   ".tiff", ".webp", ".pgf", ".raw", ".rgba")

_INSTALL_HINT = 'pip install "refflow[plot]"'
_CHUNK = 65536  # rows per log-density call on the grid: bounded memory at any resolution


def require_matplotlib(where):
    """matplotlib's ``(Figure, FigureCanvasAgg, Axes)`` classes, imported on demand.

    Parameters
    ----------
    where : str
        The caller, named in the error.

    Returns
    -------
    Figure, FigureCanvasAgg, Axes : type
        Build figures as ``fig = Figure(); FigureCanvasAgg(fig)``: no pyplot, no global backend.

    Raises
    ------
    ImportError
        Without matplotlib, with the install hint ``pip install "refflow[plot]"``.

    Examples
    --------
    >>> from refflow.plots import require_matplotlib
    >>> Figure, FigureCanvasAgg, Axes = require_matplotlib("example")
    >>> fig = Figure(figsize=(2, 2)); canvas = FigureCanvasAgg(fig)
    >>> isinstance(fig.add_subplot(), Axes)
    True
    """
    try:
        from matplotlib.axes import Axes
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"{where} needs matplotlib, which is not installed: "
                          f"{_INSTALL_HINT}") from exc
    return Figure, FigureCanvasAgg, Axes


def _axes(ax, where, figsize=(5.0, 4.5)):
    """``(owner, ax)``: a new Agg figure and its axes when ``ax`` is None, else ``(None, ax)``."""
    Figure, FigureCanvasAgg, Axes = require_matplotlib(where)
    if ax is None:
        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)  # attaches itself as fig.canvas; no pyplot, no global backend
        return fig, fig.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"{where}: ax must be a matplotlib Axes, got {type(ax).__name__}")
    return None, ax


def _title(title, where):
    if title is not None and not isinstance(title, str):
        raise TypeError(f"{where}: title must be a str or None, got {type(title).__name__}")
    return title


def _bounds(bounds, where):
    try:
        (x0, x1), (y0, y1) = bounds
        values = [float(v) for v in (x0, x1, y0, y1)]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bounds must be ((x_min, x_max), (y_min, y_max)), got "
                         f"{bounds!r}") from None
    if not all(math.isfinite(v) for v in values) or not (values[0] < values[1]
                                                         and values[2] < values[3]):
        raise ValueError(f"{where}: bounds must be finite with min < max on each axis, got "
                         f"{bounds!r}")
    return (values[0], values[1]), (values[2], values[3])


def _points_2d(points, where, name):
    arr = as_float_array(points, where, name)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{where}: {name} must have shape (n, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: {name} must be finite")
    return arr.astype(np.float64)


def _log_density_function(log_prob, where):
    """A function ``(n, 2) -> (n,)`` from a Flow-like object or a callable."""
    if hasattr(log_prob, "log_prob") and callable(log_prob.log_prob):
        return log_prob.log_prob
    if hasattr(log_prob, "score_samples") and callable(log_prob.score_samples):
        return log_prob.score_samples  # a fitted FlowDensity
    if callable(log_prob):
        return log_prob
    raise TypeError(f"{where}: log_prob must be a Flow, an object with log_prob or "
                    f"score_samples, or a callable (n, 2) -> (n,), got {type(log_prob).__name__}")


def _evaluate(fn, points, where):
    out = fn(points)
    if isinstance(out, tuple):  # a log_target (log_p, grad), e.g. a Rezende potential
        out = out[0]
    lp = as_float_array(out, where, "the log-density")
    if lp.shape != (points.shape[0],):
        raise ValueError(f"{where}: log_prob returned shape {lp.shape} for {points.shape[0]} "
                         f"points, expected ({points.shape[0]},)")
    lp = lp.astype(np.float64)
    if np.isnan(lp).any() or (lp == np.inf).any():
        raise ValueError(f"{where}: log_prob returned NaN or +inf on the grid")
    return lp


def plot_density_2d(log_prob, *, bounds=((-4, 4), (-4, 4)), resolution=200, samples=None,
                    ax=None, title=None, cmap="viridis"):
    """Heatmap of the density ``exp(log_prob)`` of a 2-D model on a grid, optionally with samples.

    Parameters
    ----------
    log_prob : Flow or callable
        A 2-D ``Flow`` (or any object with ``log_prob``, or ``score_samples`` as a fitted
        ``FlowDensity``), or a callable ``(n, 2) -> (n,)`` log-density; a callable returning
        ``(log_p, grad)`` (a ``log_target`` such as ``rezende_potential("U1")``) is accepted.
        Unnormalised log-densities are drawn as they are.
    bounds : ((x_min, x_max), (y_min, y_max)), default ((-4, 4), (-4, 4))
    resolution : int, default 200
        Grid points per axis (``>= 2``): ``x = linspace(x_min, x_max, resolution)``, likewise
        ``y``.
    samples : array_like of shape (m, 2), optional
        Drawn as a scatter over the heatmap.
    ax : matplotlib Axes, optional
        Draw here (and return it); default a new figure (returned).
    title : str, optional
    cmap : str, default "viridis"

    Returns
    -------
    matplotlib.figure.Figure or matplotlib.axes.Axes
        The image is ``ax.images[-1]``; its array is ``exp(log_prob)`` at the grid points,
        rows along ``y`` (``[i, j]`` at ``(x_j, y_i)``), with pixels centred on them.

    Raises
    ------
    ImportError
        matplotlib is missing.
    ValueError
        Bad bounds or resolution, a log-density of the wrong shape, NaN, ``+inf`` or large
        enough that ``exp`` overflows, samples not ``(m, 2)``.
    TypeError
        ``log_prob`` is not a model or callable; ``ax`` is not an Axes.
    """
    where = "plot_density_2d"
    require_matplotlib(where)
    fn = _log_density_function(log_prob, where)
    (x0, x1), (y0, y1) = _bounds(bounds, where)
    resolution = check_int(resolution, where, "resolution", minimum=2)
    title = _title(title, where)
    if samples is not None:
        samples = _points_2d(samples, where, "samples")
    xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row i: y_i
    lp = np.concatenate([_evaluate(fn, grid[i:i + _CHUNK], where)
                         for i in range(0, grid.shape[0], _CHUNK)])
    if lp.max() > np.log(np.finfo(np.float64).max):
        raise ValueError(f"{where}: exp(log_prob) overflows on the grid (max log-density "
                         f"{lp.max():.3g}); shift the log-density")
    density = np.exp(lp).reshape(resolution, resolution)

    owner, ax = _axes(ax, where)
    dx, dy = (x1 - x0) / (resolution - 1), (y1 - y0) / (resolution - 1)
    ax.imshow(density, origin="lower", extent=(x0 - dx / 2, x1 + dx / 2, y0 - dy / 2, y1 + dy / 2),
              aspect="auto", cmap=cmap, interpolation="nearest")
    if samples is not None:
        ax.scatter(samples[:, 0], samples[:, 1], s=1.5, color="white", alpha=0.5, linewidths=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    if title is not None:
        ax.set_title(title)
    return owner if owner is not None else ax


def plot_samples(samples, *, n=1000, rng=None, bounds=None, ax=None, title=None, color=None,
                 size=2.0, alpha=0.5):
    """Scatter plot of 2-D points, or of ``n`` samples drawn from a model.

    Parameters
    ----------
    samples : array_like of shape (m, 2), or a model with ``sample(n, rng)``
        Points, or a 2-D ``Flow`` to draw ``n`` of them from with ``rng``.
    n : int, default 1000
        Samples to draw from a model (ignored for points).
    rng : int or numpy.random.Generator, optional
        Seed for drawing from a model.
    bounds : ((x_min, x_max), (y_min, y_max)), optional
        Axis limits; default matplotlib's.
    ax : matplotlib Axes, optional
    title : str, optional
    color : matplotlib color, optional
    size, alpha : float
        Marker area (points^2) and opacity.

    Returns
    -------
    matplotlib.figure.Figure or matplotlib.axes.Axes
        The scatter is ``ax.collections[-1]``; its offsets are the points.
    """
    where = "plot_samples"
    require_matplotlib(where)
    if hasattr(samples, "sample") and callable(samples.sample):
        n = check_int(n, where, "n", minimum=1)
        samples = samples.sample(n, check_rng(rng, where))
    points = _points_2d(samples, where, "samples")
    if bounds is not None:
        bounds = _bounds(bounds, where)
    title = _title(title, where)
    owner, ax = _axes(ax, where)
    ax.scatter(points[:, 0], points[:, 1], s=size, alpha=alpha, color=color, linewidths=0)
    if bounds is not None:
        ax.set_xlim(*bounds[0])
        ax.set_ylim(*bounds[1])
    if title is not None:
        ax.set_title(title)
    return owner if owner is not None else ax


def _history_dict(history, where):
    if hasattr(history, "as_dict") and callable(history.as_dict):
        history = history.as_dict()
    if not isinstance(history, Mapping):
        raise TypeError(f"{where}: history must be a refflow.train.History, its as_dict(), or the "
                        f"dict returned by fit_reverse_kl, got {type(history).__name__}")
    if "kl" not in history and "train_nll" not in history:
        raise ValueError(f"{where}: history has neither 'train_nll' (refflow.train.fit) nor 'kl' "
                         f"(fit_reverse_kl); keys {sorted(history)}")
    return history


def _series(values, where, name):
    arr = as_float_array(values, where, name)
    if arr.ndim != 1:
        raise ValueError(f"{where}: {name} must be a list of numbers, got shape {arr.shape}")
    return arr.astype(np.float64)


def plot_history(history, ax=None, *, title=None):
    """Loss curves: train and validation NLL per epoch, or the reverse-KL estimate per step.

    Parameters
    ----------
    history : refflow.train.History or dict
        From :func:`refflow.train.fit` (or its ``as_dict()``): ``train_nll`` and ``val_nll``
        per epoch (epochs counted from 1), with the best epoch and the learning rate's drops
        (``lr_drops``) marked when recorded. NLLs are
        drawn in the data's units, ``nll + nll_shift`` (a ``FlowDensity``'s history has
        ``nll_shift = sum(log scale_)``; the axis label says so), in nats per sample. Or the
        dict of :func:`refflow.variational.fit_reverse_kl`: ``kl`` per step, drawn faintly
        with its running mean over ``max(1, steps // 50)`` steps.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure or matplotlib.axes.Axes
        One line per curve in ``ax.lines`` (labels ``"train NLL"``, ``"validation NLL"``, or
        ``"KL estimate"``, ``"running mean"``).

    Raises
    ------
    TypeError
        Not a history.
    ValueError
        An empty history, or one with neither NLL nor KL values.
    """
    where = "plot_history"
    require_matplotlib(where)
    history = _history_dict(history, where)
    title = _title(title, where)
    if "kl" in history:
        kl = _series(history["kl"], where, "history['kl']")
        if kl.size == 0:
            raise ValueError(f"{where}: the history is empty (no steps)")
        owner, ax = _axes(ax, where, figsize=(6.0, 4.0))
        steps = np.arange(1, kl.size + 1)
        window = max(1, kl.size // 50)
        running = np.convolve(kl, np.ones(window) / window, mode="valid")
        ax.plot(steps, kl, color="C0", alpha=0.35, linewidth=0.8, label="KL estimate")
        ax.plot(steps[window - 1:], running, color="C0", label="running mean")
        ax.set_xlabel("step")
        ax.set_ylabel("E_q[log q - log p~]")
    else:
        train = _series(history["train_nll"], where, "history['train_nll']")
        val = _series(history.get("val_nll", []), where, "history['val_nll']")
        if train.size == 0:
            raise ValueError(f"{where}: the history is empty (no epochs)")
        shift = history.get("nll_shift", 0.0)
        if not (isinstance(shift, numbers.Real) and math.isfinite(shift)):
            raise ValueError(f"{where}: history['nll_shift'] must be a finite number, got "
                             f"{shift!r}")
        drops = history.get("lr_drops", [])
        if not (isinstance(drops, (list, tuple)) and all(
                isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in drops)):
            raise ValueError(f"{where}: history['lr_drops'] must be a list of epochs "
                             f"(integers), got {drops!r}")
        owner, ax = _axes(ax, where, figsize=(6.0, 4.0))
        ax.plot(np.arange(1, train.size + 1), train + shift, marker=".", label="train NLL")
        if val.size:
            ax.plot(np.arange(1, val.size + 1), val + shift, marker=".", label="validation NLL")
        best = history.get("best_epoch")
        if best is not None:
            ax.axvline(int(best) + 1, color="0.6", linestyle=":", linewidth=1,
                       label=f"best epoch ({int(best) + 1})")
        for i, drop in enumerate(drops):
            # lr_schedule="plateau": between the drop's epoch and the next, both counted from 1
            ax.axvline(int(drop) + 1.5, color="0.4", linestyle="--", linewidth=1,
                       label="learning rate lowered" if i == 0 else None)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (from 1)")
        ax.set_ylabel("mean NLL, nats per sample" + (" (data units)" if shift else ""))
    ax.legend()
    if title is not None:
        ax.set_title(title)
    return owner if owner is not None else ax


def _rows(values, where, name, dim=None):
    arr = as_float_array(values, where, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where}: {name} must have shape (n, d) with n, d >= 1, got "
                         f"{arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{where}: {name} has {arr.shape[1]} columns, data has {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: {name} must be finite")
    return arr.astype(np.float64)


def pair_plot(data, samples=None, *, names=None, features=None, bins=40, max_points=2000,
              rng=0, labels=("data", "samples"), figure=None, title=None, max_features=12):
    """Pair plot of data against model samples: marginal histograms and pairwise scatters.

    A ``k x k`` grid over the chosen features: on the diagonal, histograms of each feature
    (``density=True``, bins over the data's range, the same bins for the samples, so the two
    densities are comparable); below it, scatter plots of every pair (data in C0, samples in
    C1, at most ``max_points`` rows of each drawn, chosen at random with ``rng``); above it,
    nothing. Works for any number of features (one feature: one histogram), which
    :func:`plot_density_2d` (2-D only) cannot.

    Parameters
    ----------
    data : array_like of shape (n, d)
    samples : array_like of shape (m, d), optional
        E.g. ``model.sample(n)``; drawn over the data.
    names : sequence of str, optional
        Feature names for the axis labels (default ``x0``, ``x1``, ...).
    features : sequence of int, optional
        0-based columns to show, in this order (default all).
    bins : int, default 40
    max_points : int, default 2000
        Rows per scatter plot (histograms use every row).
    rng : int or numpy.random.Generator, default 0
        Chooses the scattered rows.
    labels : (str, str), default ("data", "samples")
        The legend.
    figure : matplotlib Figure or SubFigure, optional
        Draw into it (default a new figure, about 2.2 inches per feature).
    title : str, optional
    max_features : int, default 12
        More features than this raise ``ValueError`` (the grid grows as ``k^2``): choose
        some with ``features``.

    Returns
    -------
    matplotlib.figure.Figure or SubFigure
        Its axes are ``k x k`` in row-major order (``fig.axes[i * k + j]``; the upper
        triangle's are switched off). A diagonal histogram of the data is
        ``ax.containers[0]`` (its bar heights are the densities), of the samples
        ``ax.containers[1]``; a lower scatter's collections are ``[data, samples]``.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.plots import pair_plot
    >>> rng = np.random.default_rng(0)
    >>> fig = pair_plot(rng.normal(size=(500, 3)), rng.normal(size=(500, 3)), bins=20)
    >>> len(fig.axes), sum(ax.axison for ax in fig.axes)
    (9, 6)
    """
    where = "pair_plot"
    Figure, FigureCanvasAgg, _ = require_matplotlib(where)
    data = _rows(data, where, "data")
    n, d = data.shape
    if samples is not None:
        samples = _rows(samples, where, "samples", d)
    if features is None:
        features = list(range(d))
    else:
        if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
            raise TypeError(f"{where}: features must be a sequence of column indices, got "
                            f"{type(features).__name__}")
        features = [check_int(j, where, "features entry", minimum=0) for j in features]
        if not features or max(features) >= d or len(set(features)) != len(features):
            raise ValueError(f"{where}: features must be distinct column indices below {d}, "
                             f"got {features}")
    max_features = check_int(max_features, where, "max_features", minimum=1)
    if len(features) > max_features:
        raise ValueError(f"{where}: {len(features)} features make a {len(features)} x "
                         f"{len(features)} grid; choose at most {max_features} with "
                         f"features=[...] (or raise max_features)")
    if names is None:
        names = [f"x{j}" for j in range(d)]
    else:
        names = [str(v) for v in names]
        if len(names) != d:
            raise ValueError(f"{where}: names has {len(names)} entries, data has {d} columns")
    bins = check_int(bins, where, "bins", minimum=1)
    max_points = check_int(max_points, where, "max_points", minimum=1)
    if not (isinstance(labels, (tuple, list)) and len(labels) == 2
            and all(isinstance(v, str) for v in labels)):
        raise TypeError(f"{where}: labels must be two str, got {labels!r}")
    title = _title(title, where)
    gen = check_rng(rng, where)
    pick = lambda arr: arr if arr.shape[0] <= max_points else arr[  # noqa: E731
        np.sort(gen.choice(arr.shape[0], max_points, replace=False))]
    shown = pick(data)
    shown_samples = None if samples is None else pick(samples)

    k = len(features)
    if figure is None:
        figure = Figure(figsize=(max(3.0, 2.2 * k), max(3.0, 2.2 * k)))
        FigureCanvasAgg(figure)
    elif not hasattr(figure, "subplots"):
        raise TypeError(f"{where}: figure must be a matplotlib Figure or SubFigure, got "
                        f"{type(figure).__name__}")
    axes = np.asarray(figure.subplots(k, k, squeeze=False))
    for a, i in enumerate(features):
        lo, hi = float(data[:, i].min()), float(data[:, i].max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.05 * (hi - lo)
        for b, j in enumerate(features):
            ax = axes[a, b]
            if b > a:
                ax.set_axis_off()
                continue
            if a == b:
                ax.hist(data[:, i], bins=bins, range=(lo, hi), density=True, alpha=0.5,
                        color="C0", label=labels[0])
                if samples is not None:
                    ax.hist(samples[:, i], bins=bins, range=(lo, hi), density=True, alpha=0.5,
                            color="C1", label=labels[1])
                ax.set_xlim(lo - pad, hi + pad)
                ax.set_yticks([])
            else:
                ax.scatter(shown[:, j], shown[:, i], s=2, alpha=0.4, color="C0", linewidths=0,
                           label=labels[0])
                if shown_samples is not None:
                    ax.scatter(shown_samples[:, j], shown_samples[:, i], s=2, alpha=0.4,
                               color="C1", linewidths=0, label=labels[1])
                jlo, jhi = float(data[:, j].min()), float(data[:, j].max())
                jpad = 0.05 * (jhi - jlo) if jhi > jlo else 0.5
                ax.set_xlim(jlo - jpad, jhi + jpad)
                ax.set_ylim(lo - pad, hi + pad)
            if a == k - 1:
                ax.set_xlabel(names[j])
            else:
                ax.tick_params(labelbottom=False)
            if b == 0 and a > 0:
                ax.set_ylabel(names[i])
            elif b > 0:
                ax.tick_params(labelleft=False)
    if samples is not None or k > 1:
        axes[0, 0].legend(loc="upper right", fontsize="small")
    if title is not None:
        figure.suptitle(title)
    return figure


def save_figure(fig, path, *, dpi=150):
    """Write a figure (or the figure of an Axes) to ``path``; the format follows the suffix.

    Parameters
    ----------
    fig : matplotlib.figure.Figure or matplotlib.axes.Axes
    path : str or os.PathLike
        Its directory must exist; the suffix is one of :data:`FIGURE_SUFFIXES`.
    dpi : float, default 150

    Returns
    -------
    str
        The path written.
    """
    where = "save_figure"
    Figure, _, Axes = require_matplotlib(where)
    if isinstance(fig, Axes):
        try:
            fig = fig.get_figure(root=True)  # the top-level figure, also for a subfigure's axes
        except TypeError:  # matplotlib < 3.10
            fig = fig.figure
    if not isinstance(fig, Figure):
        raise TypeError(f"{where}: expected a matplotlib Figure or Axes, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{where}: the directory {directory!r} does not exist")
    if os.path.splitext(path)[1].lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"{where}: {path!r} has no known image suffix; use one of "
                         f"{', '.join(FIGURE_SUFFIXES)}")
    dpi = check_positive(dpi, where, "dpi")
    fig.savefig(path, dpi=dpi)
    return path
