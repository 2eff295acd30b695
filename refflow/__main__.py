"""Command line: ``refflow COMMAND ...`` (or ``python -m refflow COMMAND ...``).

``demo``
    The README's main job: fits a neural spline flow (``FlowDensity(flow="nsf")``) to a seeded
    two-moons sample, prints the held-out log-likelihood, runs the oracle over every registered
    bijector and, when matplotlib is installed, writes a PNG of data, model density and samples.
    Exit status 1 if an oracle check fails or the model is no better than a Gaussian.
``fit``
    Fits a ``FlowDensity`` to a toy (by name) or to a data file and saves it (``.npz``);
    ``--context-columns`` fits a conditional density, ``--plot`` draws the fit.
``score``
    Log-densities of the rows of a data file under a saved model, and a summary.
``sample``
    Seeded samples from a saved model (at given contexts for a conditional one).
``transform`` / ``inverse-transform``
    Rows to the latent (standard normal) space of a saved model, and back.
``check``
    The oracle over every registered bijector; exit status 1 on any failure.
``audit``
    The oracle over every bijector class a peer library exports (zuko, nflows, normflows,
    pyro, flowjax, distrax, tfp): a table, ``--json``/``--markdown`` reports; exit status 1 on
    any failure, 2 when the library is not installed.
``potentials``
    Fits planar flows to the Rezende-Mohamed potentials U1-U4 by reverse KL.

Data files: ``.csv``, ``.tsv``, ``.txt`` (a real CSV parser: quoted fields, ``#`` comments,
``;``/tab/whitespace delimiters detected; pandas' when installed), ``.npy``, ``.npz`` and
``.parquet`` (with pandas and pyarrow); columns chosen by name or 0-based position
(``--columns``, ``--exclude-columns``), rows with missing values dropped on request
(``--drop-na``); see :mod:`refflow.data.tables`. Outputs: ``.npy``, ``.csv``, ``.tsv``, ``.txt``
(scores, samples, latent points), ``.npz`` (models), any matplotlib image suffix (figures). Every
output path is checked (known suffix, existing writable directory, not a directory) before any
work is done, and written atomically.

Errors (bad data, a damaged model file, a diverging fit) print one line and exit with status 1
(``REFFLOW_TRACEBACK=1`` shows the traceback instead); usage errors exit with status 2
(argparse); Ctrl-C exits with status 130 (``fit`` first saves the best epoch's parameters when
``-o`` was given). Warnings (rows scored ``-inf``, rows dropped) print one line each.
"""

import argparse
import contextlib
import inspect
import json
import math
import os
import sys
import time
import warnings

import numpy as np

__all__ = ["main"]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Suffixes of array outputs (scores, samples, latent points) and their text delimiters.
ARRAY_OUTPUTS = {".npy": None, ".csv": ",", ".tsv": "\t", ".txt": " "}
#: Feature columns drawn in ``fit --plot``'s pair plot for wider data.
PLOT_FEATURES = 6


class CommandError(Exception):
    """A failure to report as one line (no traceback)."""


def _say(text):
    print(text, flush=True)  # flushed: a pipe reader sees each line as it is printed


# --------------------------------------------------------------------------------- helpers
def _checked(convert, ok, expected):
    """An argparse ``type``: ``convert(text)``, refused with ``expected`` unless ``ok(value)``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")


def _int_or_auto(text):
    return "auto" if text.strip().lower() == "auto" else int(text)


_positive_int_or_auto = _checked(_int_or_auto, lambda v: v == "auto" or v >= 1,
                                 "a positive integer or auto")
_non_negative_int_or_auto = _checked(_int_or_auto, lambda v: v == "auto" or v >= 0,
                                     "a non-negative integer or auto")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
_open_unit = _checked(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")
_non_negative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0,
                               "a non-negative number")


def _hidden(text):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or comma-separated layer widths such as 64,64, got {text!r}") \
            from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer widths such as 64,64, got {text!r}")
    return sizes


def _names(text):
    names = [s.strip() for s in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names or 0-based "
                                         f"positions, got {text!r}")
    return names


def _list_of(what, convert=str, ok=lambda v: True):
    """An argparse ``type``: comma-separated values, each converted and checked."""
    def parse(text):
        try:
            values = [convert(v.strip()) for v in text.split(",")]
        except ValueError:
            values = None
        if not values or any(v in ("", None) or not ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values
    return parse


def _option(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. n_bins=16), got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value  # a bare word: a string option such as scale=exp
    return key.strip(), parsed


def _delimiter(text):
    named = {"tab": "\t", "\\t": "\t", "space": "whitespace", "whitespace": "whitespace",
             "comma": ",", "semicolon": ";"}
    value = named.get(text.lower(), text)
    if value != "whitespace" and len(value) != 1:
        raise argparse.ArgumentTypeError(f"expected one character, tab or whitespace, got "
                                         f"{text!r}")
    return value


def _potential(text):
    from .data.potentials import POTENTIALS

    if text not in POTENTIALS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                         f"{', '.join(POTENTIALS)})")
    return text


def _count(k, noun):
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


def _fmt(value):
    """A number readably: 4 decimals in [1e-3, 1e6), else 4 significant digits (e.g.
    ``-1.000e+300``, never a 300-digit number); ``-inf``, ``inf``, ``nan`` as such."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4f}"
    return f"{value:.3e}"


def _stats(values):
    """``(mean, std, min, median, max)`` of finite values, without overflow for values near
    float64's limits (mean and std computed on ``values / max|values|`` then, and scaled back)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(values.mean()), float(values.std())
    if not (math.isfinite(mean) and math.isfinite(std)):
        m = float(np.abs(values).max())
        scaled = values / m
        mean, std = m * float(scaled.mean()), m * float(scaled.std())
    return mean, std, float(values.min()), float(np.median(values)), float(values.max())


# ------------------------------------------------------------------------ output paths
def _check_output(path, suffixes, option, what):
    """Refuse an output path before any work: a known suffix, not a directory, in an existing
    writable directory. Returns the suffix."""
    if os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a directory; give a file name for the {what}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in suffixes:
        raise CommandError(f"{option} {path}: the {what} must be a {' / '.join(suffixes)} file"
                           + (f" (got {suffix!r})" if suffix else " (no suffix)"))
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CommandError(f"{option} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: the directory {directory} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CommandError(f"{option} {path}: the file exists and is not writable")
    return suffix


def _check_figure(path, option):
    """A figure output: matplotlib installed, an image suffix, a writable directory."""
    from .plots import FIGURE_SUFFIXES, require_matplotlib

    try:
        require_matplotlib(f"{option} {path}")
    except ImportError as exc:
        raise CommandError(str(exc).splitlines()[0]) from None
    _check_output(path, FIGURE_SUFFIXES, option, "figure")


def _check_plot_dir(path, option):
    """A directory for figures: created if missing (with its parents), writable."""
    from .plots import require_matplotlib

    try:
        require_matplotlib(f"{option} {path}")
    except ImportError as exc:
        raise CommandError(str(exc).splitlines()[0]) from None
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"{option} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot create the directory ({exc.strerror})") \
            from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: the directory is not writable")


def _write_array(path, array, names):
    """``.npy``, or text with a header line (``.csv``/``.tsv``/``.txt``, 17 significant
    digits: the float64 values read back exactly); written atomically."""
    from .io import atomic_write

    delimiter = ARRAY_OUTPUTS[os.path.splitext(path)[1].lower()]
    if delimiter is None:
        atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
        return
    array = array.reshape(array.shape[0], -1)

    def quote(name):
        special = delimiter in name or '"' in name or "#" in name or name != name.strip()
        return '"' + name.replace('"', '""') + '"' if special else name

    header = delimiter.join(quote(n) for n in names)
    atomic_write(path, lambda f: np.savetxt(f, array, fmt="%.17g", delimiter=delimiter,
                                            header=header, comments="", encoding="utf-8"))


# ---------------------------------------------------------------------------- reading data
def _read(args, source, *, columns=None, context_columns=None, allow_toy=True):
    """``Table`` of a toy (by name: ``--n`` seeded points) or of a data file."""
    from . import data as datasets
    from .data.tables import Table, read_table

    if allow_toy and source in datasets.TOYS:
        if context_columns:
            raise CommandError(f"{source}: a toy has no context columns")
        x = datasets.toy(source, 5000 if args.n is None else args.n, rng=args.seed)
        return Table(x, None, None, None, 0)
    if not os.path.exists(source):
        toys = f"neither a toy ({', '.join(datasets.TOYS)}) nor " if allow_toy else ""
        raise CommandError(f"{source!r} is {toys}an existing file")
    columns = getattr(args, "columns", None) if columns is None else columns
    context_columns = (getattr(args, "context_columns", None) if context_columns is None
                       else context_columns)
    try:
        return read_table(
            source, columns=columns, exclude=getattr(args, "exclude_columns", None),
            context_columns=context_columns, drop_na=getattr(args, "drop_na", False),
            delimiter=getattr(args, "delimiter", None), decimal=getattr(args, "decimal", "."),
            key=getattr(args, "key", None))
    except IsADirectoryError as exc:
        raise CommandError(str(exc)) from None


def _model_columns(args, model, source):
    """``(columns, context_columns)`` to read ``source`` with for ``model``: the options when
    given; else, for a model fitted on named columns and a file with a header, the model's
    columns by name (so a file with more columns, in any order, is read right)."""
    from .data.tables import column_names

    columns, context_columns = args.columns, getattr(args, "context_columns", None)
    fitted = getattr(model, "feature_names_in_", None)
    fitted_context = getattr(model, "context_names_in_", None)
    header = None
    if os.path.isfile(source):
        header = column_names(source, delimiter=getattr(args, "delimiter", None),
                              decimal=getattr(args, "decimal", "."))
    if header is not None and fitted is not None:
        if columns is None and args.exclude_columns is None:
            columns = [str(v) for v in fitted]
        elif columns is not None and list(columns) != [str(v) for v in fitted]:
            raise CommandError(f"{source}: --columns {','.join(columns)} do not match the "
                               f"model's features {','.join(map(str, fitted))} (names and "
                               f"order)")
    if getattr(model, "n_context_features_in_", 0) and context_columns is None:
        if header is not None and fitted_context is not None:
            context_columns = [str(v) for v in fitted_context]
        else:
            raise CommandError(f"{source}: the model is conditional ({model.n_context_features_in_}"
                               f" context features); name its context columns with "
                               f"--context-columns")
    return columns, context_columns


def _check_read_names(table, model, source):
    """The columns read from a file with a header must be the model's, by name and order
    (a file read with --exclude-columns, say, could hold them in another order)."""
    for got, attr, what in ((table.names, "feature_names_in_", "features"),
                            (table.context_names, "context_names_in_", "context columns")):
        fitted = getattr(model, attr, None)
        if got is not None and fitted is not None and list(got) != [str(v) for v in fitted]:
            raise CommandError(f"{source}: the columns read, {','.join(got)}, are not the "
                               f"model's {what} {','.join(map(str, fitted))} (names and order); "
                               f"choose them with --columns")


def _model_input(call, source):
    """``call()``, a FlowDensity method on the rows read, with a feature-count mismatch told in
    the command line's words."""
    try:
        with _columns_matched():
            return call()
    except ValueError as exc:
        if "features, but FlowDensity is expecting" in str(exc):
            raise CommandError(f"{source}: {_one_line(exc)} Choose the columns with --columns "
                               f"(or --exclude-columns).") from None
        raise


def _load_model(path, kinds=("FlowDensity", "Flow")):
    from . import io
    from .estimator import FlowDensity
    from .distributions import Flow

    try:
        model = io.load(path)
    except FileNotFoundError:
        raise CommandError(f"{path}: no such model file") from None
    classes = {"FlowDensity": FlowDensity, "Flow": Flow}
    if not isinstance(model, tuple(classes[k] for k in kinds)):
        raise CommandError(f"{path}: holds a {type(model).__name__}, not a "
                           f"{' or '.join(kinds)}")
    return model


@contextlib.contextmanager
def _columns_matched():
    """The command line matches a file's columns to the model's feature names itself and
    passes arrays: scikit-learn's "X does not have valid feature names" warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(X|context) does not have valid feature")
        yield


def _progress(args):
    return "auto" if args.progress is None else args.progress


def _cli_words(message):
    """A FlowDensity message in the command line's words (its options, not Python's)."""
    for python, cli in (("flow_kwargs={'hidden_degrees': 'random'}",
                         "--option hidden_degrees=random"),
                        ("use hidden_degrees='random'", "pass --option hidden_degrees=random"),
                        ("widen the layer", "widen the layers with --hidden W,W"),
                        ("flow_kwargs", "--option")):
        message = message.replace(python, cli)
    return message


# -------------------------------------------------------------------------------- commands
def _fit_defaults():
    """FlowDensity's own defaults, so that ``fit``'s options cannot drift from Python's."""
    from .estimator import FlowDensity

    return {p.name: p.default for p in inspect.signature(FlowDensity).parameters.values()}


def cmd_fit(args, out):
    from . import io
    from .estimator import FlowDensity, training_length
    from .training.optim import ReduceOnPlateau

    _check_output(args.output, (".npz",), "-o", "model file")
    if args.plot:
        _check_figure(args.plot, "--plot")
    table = _read(args, args.data)
    x, context = table.x, table.context
    n, dim = x.shape
    c_dim = 0 if context is None else context.shape[1]
    hidden = args.hidden
    if hidden == "auto":  # MADE's degree rules need dim - 1 (dim with a context) units
        hidden = (max(64, dim),) * 2
    model = FlowDensity(
        flow=args.model, n_layers=args.layers, hidden=hidden,
        flow_kwargs=dict(args.option) if args.option else None, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, validation_fraction=args.validation_fraction,
        patience=None if args.patience == 0 else args.patience, random_state=args.seed,
        lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
        weight_decay=args.weight_decay, base=args.base,
        average=None if args.average == "none" else args.average,
        average_decay=args.average_decay, progress=_progress(args),
        whiten={"yes": True, "no": False}.get(args.whiten, args.whiten),
        rotation=None if args.rotation == "none" else args.rotation,
        blend={"yes": True, "no": False}.get(args.blend, args.blend))
    what = (f"{args.data} ({n} x {dim}" + (f", {_count(c_dim, 'context column')}" if c_dim else "")
            + (f"; {_count(table.n_dropped, 'row')} with missing values dropped"
               if table.n_dropped else "") + ")")
    epochs, patience = training_length(model.epochs, model.patience, dim)
    out(f"fit: {args.model} on {what}, hidden {hidden}, up to {epochs} epochs "
        f"(Ctrl-C stops after the current step and keeps the best epoch)")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*interrupted \(Ctrl-C\)")
        try:
            model.fit(x, context=context)
        except ValueError as exc:
            raise CommandError(_cli_words(str(exc).splitlines()[0])) from None
    seconds = time.perf_counter() - start
    h = model.history_
    interrupted = h.stop_reason == "interrupted"
    lowered = ""
    if h.lr_drops:   # lr_schedule="plateau": the best epoch put back at a lower rate
        plateau = ReduceOnPlateau()
        patience = plateau.after_drop(patience)
        lowered = "".join(
            f"; from epoch {epoch + 2} at lr {model.lr * plateau.factor ** (i + 1):g} (the best "
            f"epoch's parameters put back)" for i, epoch in enumerate(h.lr_drops))
    stop = lowered + {"patience": f"; stopped early: {_count(patience, 'epoch')} without a better "
                                  f"{'validation' if h.val_nll else 'training'} score",
                      "interrupted": "; interrupted (Ctrl-C)"}.get(h.stop_reason, "")
    scores = getattr(model, "candidate_scores_", None)
    if scores:   # flow="auto" or whiten="auto": every candidate's best validation score
        kept = max(scores, key=scores.get)   # the first of equals, as fit keeps
        out(f"  {len(scores)} candidates fitted in {seconds:.1f} s; validation mean "
            f"log-likelihood: " + ", ".join(f"{k} {_fmt(v)}" for k, v in scores.items()))
        out(f"  kept {kept}: {h.n_epochs} epochs ({h.n_steps} steps){stop}")
    else:
        out(f"  {h.n_epochs} epochs ({h.n_steps} steps) in {seconds:.1f} s{stop}")
    blend = getattr(model, "blend_weights_", None)
    if blend is not None:   # --blend auto or yes: scores and samples are the blend's
        out("  blended (weights by the validation rows): "
            + ", ".join(f"{k} {v:.3g}" for k, v in blend.items())
            + f"; validation mean log-likelihood {_fmt(model.blend_score_)}")
    if model.rotated_:
        out("  fitted to the whitened rows rotated to their independent components (FastICA, "
            "folded into the model; --rotation none to leave them as they are)")
    out("  mean log-likelihood, nats per sample, in the data's units (higher is better):")
    if h.n_epochs:
        out(f"    training rows, epoch {h.n_epochs} (mean over its mini-batches)"
            f"  {_fmt(h.train_log_likelihood[-1])}")
        if h.val_nll:
            kept = "the averaged parameters kept" if h.best_averaged else "the parameters kept"
            out(f"    validation rows, best epoch {h.best_epoch + 1} ({kept})"
                f"  {_fmt(h.val_log_likelihood[h.best_epoch])}")
        else:
            out(f"    (no validation rows: the parameters of the best training epoch, "
                f"{h.best_epoch + 1}, are kept)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = model.score(x, context=context)
    out(f"    all {n} rows, the fitted model  {_fmt(score)}"
        + (" (some rows out of range)" if caught else ""))
    if table.names is not None:  # named columns: score and transform then read them by name
        model.feature_names_in_ = np.asarray(table.names, dtype=object)
    if table.context_names is not None:
        model.context_names_in_ = np.asarray(table.context_names, dtype=object)
    io.save(args.output, model)
    out(f"  model written to {args.output}")
    if args.plot:
        with _columns_matched():
            _fit_figure(model, x, context, table.names, args.plot, args.seed)
        out(f"  figure written to {args.plot}")
    return EXIT_INTERRUPTED if interrupted else 0


def _fit_figure(model, x, context, names, path, seed):
    """Training curves, and the fit: density and samples (2-D), or a pair plot of data vs
    samples (first ``PLOT_FEATURES`` features for wider data)."""
    from .plots import pair_plot, plot_density_2d, plot_history, require_matplotlib, save_figure

    Figure, FigureCanvasAgg, _ = require_matplotlib("fit --plot")
    dim = x.shape[1]
    samples = (model.sample(x.shape[0], random_state=seed, context=context)
               if context is not None else model.sample(x.shape[0], random_state=seed))
    if dim == 2 and context is None:
        fig = Figure(figsize=(15, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3)
        plot_history(model.history_, ax=axes[0], title="training")
        lo, hi = x.min(axis=0), x.max(axis=0)
        pad = 0.1 * np.where(hi > lo, hi - lo, 1.0)
        bounds = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
        plot_density_2d(model.score_samples, bounds=bounds, resolution=150, ax=axes[1],
                        title="model density")
        axes[2].scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="C0", label="data")
        axes[2].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4, color="C1",
                        label="samples")
        axes[2].set(xlim=bounds[0], ylim=bounds[1], title="data and samples")
        axes[2].legend(loc="upper right", markerscale=5)
    else:
        k = min(dim, PLOT_FEATURES)
        fig = Figure(figsize=(5 + 2.2 * k, max(4.0, 2.2 * k)), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subfigures(1, 2, width_ratios=[5, 2.2 * k])
        plot_history(model.history_, ax=left.subplots(), title="training")
        pair_plot(x, samples, names=names, features=list(range(k)), figure=right,
                  rng=seed, title="data and samples" + (f" (first {k} of {dim} features)"
                                                          if k < dim else ""))
    save_figure(fig, path)


def cmd_score(args, out):
    from .estimator import FlowDensity

    if args.dask:
        return _score_dask(args, out)
    if args.scheduler is not None or args.chunk_rows is not None:
        raise CommandError("--scheduler and --chunk-rows go with --dask")
    if args.output:
        _check_output(args.output, tuple(ARRAY_OUTPUTS), "-o", "scores file")
    model = _load_model(args.model)
    if isinstance(model, FlowDensity):
        model.set_params(progress=_progress(args))
        columns, context_columns = _model_columns(args, model, args.data)
    else:
        columns, context_columns = args.columns, args.context_columns
    table = _read(args, args.data, columns=columns, context_columns=context_columns)
    x = table.x
    if isinstance(model, FlowDensity):
        _check_read_names(table, model, args.data)
        scores = _model_input(lambda: model.score_samples(x, context=table.context), args.data)
    else:
        scores = model.log_prob(x, table.context)
    if args.output:
        _write_array(args.output, scores, ["log_density"])
    finite = np.isfinite(scores)
    dropped = (f" ({_count(table.n_dropped, 'row')} with missing values dropped)"
               if table.n_dropped else "")
    out(f"score: {x.shape[0]} points of {args.data}{dropped}; log-density log q(x) in nats, in "
        f"the data's units")
    if finite.any():
        mean, std, low, median, high = _stats(scores[finite])
        out(f"  mean {_fmt(mean)}  std {_fmt(std)}  min {_fmt(low)}  median {_fmt(median)}  "
            f"max {_fmt(high)}")
    k = int((~finite).sum())
    if k:
        out(f"  {_count(k, 'point')} outside the range the model represents in float64: scored "
            f"-inf" + (", left out of the statistics above" if finite.any()
                                       else ""))
    if args.output:
        out(f"  written to {args.output} (one log-density per row, in the file's order)")
    return 0


#: Bytes of data per task of ``score --dask`` (unless ``--chunk-rows`` is given).
DASK_CHUNK_BYTES = 64 << 20
#: How long ``score --dask --scheduler ADDRESS`` tries to reach the scheduler.
SCHEDULER_TIMEOUT = "10s"


@contextlib.contextmanager
def _scheduler(address):
    """dask's threaded scheduler (None), a named local one ("threads", "processes", "sync"),
    or a ``dask.distributed`` scheduler at ``address`` (a client kept open for the block)."""
    import dask

    if address is None or address in ("threads", "processes", "sync"):
        with dask.config.set(scheduler=address or "threads"):
            yield
        return
    try:
        from distributed import Client
    except ImportError:
        raise CommandError("--scheduler ADDRESS needs dask.distributed: pip install "
                           "'dask[distributed]'") from None
    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CommandError(f"--scheduler {address}: cannot connect ({_one_line(exc)})") from None
    try:
        with dask.config.set(scheduler=client):
            yield
    finally:
        client.close()


def _score_dask(args, out):
    """``score --dask``: a ``.npy`` file read through memory maps chunk by chunk, scored by
    dask tasks, the scores written chunk by chunk into a ``.npy`` file (atomically)."""
    import tempfile

    try:
        import dask  # noqa: F401
    except ImportError:
        raise CommandError("--dask needs dask: pip install 'refflow[dask]'") from None
    from ._dask import npy_rows, summarize_rows
    from .estimator import FlowDensity

    unsupported = [name for name, value in (
        ("--columns", args.columns), ("--exclude-columns", args.exclude_columns),
        ("--context-columns", args.context_columns), ("--drop-na", args.drop_na),
        ("--n", args.n)) if value]
    if unsupported:
        raise CommandError(f"--dask scores every column of a .npy file as it is; "
                           f"{', '.join(unsupported)} cannot be used with it")
    if os.path.splitext(args.data)[1].lower() != ".npy":
        raise CommandError(f"{args.data}: --dask reads a .npy file (memory-mapped)")
    if args.output:
        _check_output(args.output, (".npy",), "-o", "scores file (with --dask)")
    model = _load_model(args.model)
    conditional = (getattr(model, "n_context_features_in_", 0) > 0 if isinstance(
        model, FlowDensity) else model.context_dim is not None)
    if conditional:
        raise CommandError(f"{args.model}: a conditional model; --dask scores unconditional "
                           f"models only")
    if not os.path.isfile(args.data):
        raise CommandError(f"{args.data}: no such file")
    try:
        mapped = np.load(args.data, mmap_mode="r")
    except ValueError as exc:
        raise CommandError(f"{args.data}: not a readable .npy array ({_one_line(exc)})") from None
    dim = model.n_features_in_ if isinstance(model, FlowDensity) else model.dim
    if mapped.ndim != 2 or mapped.shape[1] != dim:
        raise CommandError(f"{args.data}: holds an array of shape {mapped.shape}; the model "
                           f"scores rows of {dim} features")
    rows = args.chunk_rows or max(1, DASK_CHUNK_BYTES // (dim * mapped.dtype.itemsize))
    try:
        x = npy_rows(os.path.abspath(args.data), rows, "score")
    except (ValueError, TypeError) as exc:
        raise CommandError(_one_line(exc)) from None
    if isinstance(model, FlowDensity):
        model.set_params(progress=False)
        scores = model.score_samples(x)
    else:
        scores = model.log_prob(x)
    target = None
    if args.output:
        directory = os.path.dirname(os.path.abspath(args.output))
        fd, target = tempfile.mkstemp(suffix=".npy", prefix=".score-", dir=directory)
        os.close(fd)
        np.lib.format.open_memmap(target, mode="w+", dtype=np.float64,
                                  shape=(mapped.shape[0],)).flush()
    try:
        with _scheduler(args.scheduler), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # counted below instead
            moments, n_neg_inf, n_other = summarize_rows(scores, target)
        if target is not None:
            os.replace(target, args.output)
            target = None
    finally:
        if target is not None:
            os.unlink(target)
    n = mapped.shape[0]
    out(f"score: {n} points of {args.data} in {len(x.chunks[0])} chunks of up to {rows} rows "
        f"(dask); log-density log q(x) in nats, in the data's units")
    if moments.n:
        out(f"  mean {_fmt(float(moments.mean()[0]))}  std {_fmt(float(moments.std()[0]))}  "
            f"min {_fmt(float(moments.low[0]))}  max {_fmt(float(moments.high[0]))}")
    if n_neg_inf:
        out(f"  {_count(n_neg_inf, 'point')} outside the range the model represents in "
            f"float64: scored -inf" + (", left out of the statistics above" if moments.n
                                       else ""))
    if n_other:
        raise CommandError(f"{args.data}: {_count(n_other, 'score')} not a number (NaN or "
                           f"+inf in the scores)")
    if args.output:
        out(f"  written to {args.output} (one log-density per row, in the file's order)")
    return 0


def _context_for_sample(args, model):
    """``None``, one context row (``--context``) or one per sample (``--context-file``)."""
    conditional = getattr(model, "n_context_features_in_", 0) > 0
    if args.context is not None and args.context_file is not None:
        raise CommandError("give --context or --context-file, not both")
    if not conditional:
        if args.context is not None or args.context_file is not None:
            raise CommandError(f"{args.model}: the model is not conditional; --context and "
                               f"--context-file do not apply")
        return None
    if args.context is not None:
        try:
            row = np.array([float(v) for v in args.context.split(",")])
        except ValueError:
            raise CommandError(f"--context {args.context}: expected comma-separated numbers") \
                from None
        return row
    if args.context_file is None:
        raise CommandError(f"{args.model}: the model is conditional "
                           f"({model.n_context_features_in_} context features); give "
                           f"--context V1,V2,... (one row for every sample) or --context-file "
                           f"FILE (one sample per row)")
    return _context_file(args, model, args.n, "sample")


def _context_file(args, model, n, rows):
    """The ``n`` context rows of ``--context-file`` (found by name when the model was fitted
    on named context columns and the file has a header)."""
    from .data.tables import column_names

    fitted = getattr(model, "context_names_in_", None)
    header = column_names(args.context_file, delimiter=args.delimiter)
    columns = args.columns
    if columns is None and header is not None and fitted is not None:
        columns = [str(v) for v in fitted]
    table = _read(args, args.context_file, columns=columns, allow_toy=False)
    if table.x.shape[0] != n:
        raise CommandError(f"--context-file {args.context_file}: {table.x.shape[0]} rows for "
                           f"{n} {rows}s; give one context row per {rows}")
    return table.x


def cmd_sample(args, out):
    from .estimator import FlowDensity

    _check_output(args.output, tuple(ARRAY_OUTPUTS), "-o", "samples file")
    model = _load_model(args.model)
    if isinstance(model, FlowDensity):
        model.set_params(progress=_progress(args))
        context = _context_for_sample(args, model)
        with _columns_matched():
            samples = model.sample(args.n, random_state=args.seed, context=context)
        names = getattr(model, "feature_names_in_", None)
    else:
        samples = model.sample(args.n, rng=args.seed)
        names = None
    dim = samples.shape[1]
    names = [str(v) for v in names] if names is not None else [f"x{j}" for j in range(dim)]
    _write_array(args.output, samples, names)
    out(f"sample: {args.n} samples (seed {args.seed}) of dimension {dim}, in the data's units, "
        f"written to {args.output}")
    return 0


def cmd_transform(args, out):
    _check_output(args.output, tuple(ARRAY_OUTPUTS), "-o", "latent file")
    model = _load_model(args.model, kinds=("FlowDensity",))
    model.set_params(progress=_progress(args))
    columns, context_columns = _model_columns(args, model, args.data)
    table = _read(args, args.data, columns=columns, context_columns=context_columns)
    _check_read_names(table, model, args.data)
    z = _model_input(lambda: model.transform(table.x, context=table.context), args.data)
    _write_array(args.output, z, [f"z{j}" for j in range(z.shape[1])])
    out(f"transform: {z.shape[0]} points of {args.data} to the latent space (standard normal "
        f"under the model), written to {args.output}")
    return 0


def cmd_inverse_transform(args, out):
    _check_output(args.output, tuple(ARRAY_OUTPUTS), "-o", "output file")
    model = _load_model(args.model, kinds=("FlowDensity",))
    model.set_params(progress=_progress(args))
    conditional = getattr(model, "n_context_features_in_", 0) > 0
    if conditional != (args.context_file is not None):
        raise CommandError(f"{args.model}: the model is conditional; give the context rows "
                           f"with --context-file FILE" if conditional else
                           f"{args.model}: the model is not conditional; --context-file does "
                           f"not apply")
    latent = _read(args, args.latent, columns=args.columns, allow_toy=False)
    context = None
    if conditional:
        context = _context_file(argparse.Namespace(**dict(vars(args), columns=None)), model,
                                latent.x.shape[0], "latent point")
    x = _model_input(lambda: model.inverse_transform(latent.x, context=context), args.latent)
    names = getattr(model, "feature_names_in_", None)
    names = [str(v) for v in names] if names is not None else [f"x{j}" for j in range(x.shape[1])]
    _write_array(args.output, x, names)
    out(f"inverse-transform: {x.shape[0]} latent points of {args.latent} to the data space, "
        f"written to {args.output}")
    return 0


def run_oracle(seed=0, n=8, out=print):
    """Oracle over every registered case; returns True when every check passed."""
    from ._cases import CASES, oracle_reports
    from .testing import RTOL_FD, RTOL_ROUND_TRIP

    out(f"Oracle: every registered bijector, randomised parameters, {n} points, float64 "
        f"(tolerances: round trip {RTOL_ROUND_TRIP:.0e}, log-det and pullbacks vs FD {RTOL_FD:.0e})")
    out(f"  {'case':<28}{'round trip':>12}{'logdet vs FD':>14}{'fwd+inv':>10}"
        f"{'fwd vjp':>10}{'inv vjp':>10}  status")
    all_ok = True
    for case_id, factory in CASES.items():
        bijector, sample_z, sample_x, sample_context = factory(seed)
        context = None if sample_context is None else sample_context(seed + 3, n)
        reports = oracle_reports(bijector, sample_z(seed + 1, n, context),
                                 sample_x(seed + 2, n, context), rng=seed, context=context)
        e = reports["bijector"].errors
        row = [
            max(e["round trip z -> x -> z"], e["round trip x -> z -> x"]),
            max(e["log_det forward vs FD"], e["log_det inverse vs FD"]),
            e["log_det fwd + inv"],
            max(reports["forward_vjp"].errors.values(), default=0.0),
            max(reports["inverse_vjp"].errors.values(), default=0.0),
        ]
        ok = all(r.ok for r in reports.values())
        all_ok &= ok
        out(f"  {case_id:<28}{row[0]:>12.1e}{row[1]:>14.1e}{row[2]:>10.1e}{row[3]:>10.1e}"
            f"{row[4]:>10.1e}  {'ok' if ok else 'FAILED'}")
        if not ok:
            for name, report in reports.items():
                if not report.ok:
                    out(f"    {name}:\n" + "\n".join("    " + l for l in str(report).splitlines()))
    out(f"Oracle: {'all checks passed' if all_ok else 'SOME CHECKS FAILED'} "
        f"({len(CASES)} bijectors)")
    return all_ok


def cmd_check(args, out):
    return 0 if run_oracle(seed=args.seed, n=args.n, out=out) else 1


def _write_text(path, text):
    """Write ``text`` to ``path`` atomically (a temporary file in the same directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cmd_audit(args, out):
    """The oracle over a peer library: exit 0 (no failure), 1 (a failure), 2 (the library is
    not installed, or exports no class named by --only)."""
    from .audit import LibraryMissing, audit

    if args.json is not None:
        _check_output(args.json, (".json",), "--json", "JSON report")
    if args.markdown is not None:
        _check_output(args.markdown, (".md",), "--markdown", "Markdown report")
    try:
        report = audit(args.library, seed=args.seed, only=args.only, dtypes=args.dtypes,
                       sizes=args.sizes, heavy=args.heavy,
                       progress=out if args.progress else None)
    except LibraryMissing as exc:
        print(f"refflow audit: error: {_one_line(exc).removeprefix('audit: ')}",
              file=sys.stderr)
        return 2
    except ValueError as exc:     # a class the library does not export: a usage error
        print(f"refflow audit: error: {_one_line(exc).removeprefix('audit: ')}",
              file=sys.stderr)
        return 2
    for line in report.table().splitlines():
        out(line)
    if args.json is not None:
        _write_text(args.json, report.to_json() + "\n")
    if args.markdown is not None:
        _write_text(args.markdown, report.markdown())
    return 1 if report.failures else 0


def fit_demo(seed=0, epochs=60, out=print, progress=False):
    """NSF on two moons: 4000 train (10 % of them for validation), 2000 test points."""
    from .data import toy_log_prob, two_moons
    from .estimator import FlowDensity

    rng = np.random.default_rng(seed)
    train = two_moons(4000, noise=0.1, rng=rng)
    test = two_moons(2000, noise=0.1, rng=rng)
    model = FlowDensity(flow="nsf", n_layers=4, hidden=(32, 32), epochs=epochs, batch_size=256,
                        lr=3e-3, validation_fraction=0.1, patience=15, random_state=seed,
                        progress=progress)
    start = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - start
    # The best single Gaussian (the MLE): the baseline any density model must beat.
    mean, cov = train.mean(axis=0), np.cov(train, rowvar=False, bias=True)
    diff = test - mean
    gauss = -0.5 * (np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
                    + np.linalg.slogdet(2 * np.pi * cov)[1]).mean()
    n_params = sum(v.size for v in model.flow_.params.values())
    test_ll = model.score(test)
    true_ll = toy_log_prob("two_moons", test, noise=0.1).mean()   # the exact density's score
    out(f"Fit: NSF ({model.n_layers} x [LULinear, autoregressive RQ spline K=8, B=3], "
        f"hidden {model.hidden}, {n_params} parameters) on two moons (4000 train incl. 10 % "
        f"validation, 2000 test, seed {seed}): {len(model.history_.train_nll)} epochs"
        + ("" if not getattr(model, "candidate_scores_", None) else
           f" ({'whitened' if model.whitened_ else 'unwhitened'}, the better of "
           f"{len(model.candidate_scores_)} fits)")
        + f" in {seconds:.1f} s")
    out(f"  mean test log-likelihood {test_ll:.4f} nats per point (true density: {true_ll:.4f}; "
        f"best single Gaussian: {gauss:.4f})")
    return model, train, test, test_ll, gauss, seconds


def _demo_plot(model, train, path, seed, out):
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        out("  (matplotlib is not installed: no PNG; pip install \"refflow[plot]\")")
        return
    from .plots import plot_density_2d, save_figure
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 3)
    bounds = ((-1.5, 2.5), (-1.0, 1.5))
    axes[0].scatter(train[:, 0], train[:, 1], s=1, alpha=0.5)
    axes[0].set(xlim=bounds[0], ylim=bounds[1], title="data (two moons)")
    plot_density_2d(model.score_samples, bounds=bounds, ax=axes[1], title="model density")
    samples = model.sample(len(train), random_state=seed)
    axes[2].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.5, color="C1")
    axes[2].set(xlim=bounds[0], ylim=bounds[1], title="model samples")
    save_figure(fig, path)
    out(f"  figure written to {path}")


def cmd_demo(args, out):
    import importlib.util

    if args.plot and importlib.util.find_spec("matplotlib") is not None:
        from .plots import FIGURE_SUFFIXES

        _check_output(args.plot, FIGURE_SUFFIXES, "--plot", "figure")
    model, train, _, test_ll, gauss, _ = fit_demo(seed=args.seed, epochs=args.epochs, out=out,
                                                  progress=_progress(args))
    fit_ok = test_ll > gauss
    if not fit_ok:
        out("Fit: the model is no better than a single Gaussian on held-out data")
    if args.plot:
        _demo_plot(model, train, args.plot, args.seed, out)
    out("")
    oracle_ok = run_oracle(seed=args.seed, out=out)
    return 0 if (fit_ok and oracle_ok) else 1


def cmd_potentials(args, out):
    from .training.variational import fit_potential

    if args.plot_dir is not None:
        _check_plot_dir(args.plot_dir, "--plot-dir")
    names = list(dict.fromkeys(args.names or ["U1", "U2", "U3", "U4"]))
    progress = None if args.progress is None else args.progress
    for name in names:
        plot = None if args.plot_dir is None else os.path.join(args.plot_dir, f"potential_{name}.png")
        options = {} if args.steps is None else {"steps": args.steps}
        result = fit_potential(name, n_layers=args.layers, rng=args.seed, plot=plot,
                               progress=progress, **options)
        out(f"{name}: {args.layers} planar layers, KL(q || p) = {result['kl_divergence']:.4f} "
            f"(E_q[log q - log p~] = {result['kl']:.4f} +/- {result['kl_stderr']:.4f}, "
            f"log Z = {result['log_normalizer']:.4f}; all in nats)"
            + (f"; figure {plot}" if plot else ""))
    return 0


# ---------------------------------------------------------------------------------- parser
def _version():
    import platform

    import numba
    import scipy

    from ._version import __version__

    return (f"refflow {__version__} (Python {platform.python_version()}, NumPy "
            f"{np.__version__}, SciPy {scipy.__version__}, numba {numba.__version__})")


def _prog():
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "refflow" if name in ("refflow", "refflow.exe") else "python -m refflow"


def _add_progress(parser):
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar on stderr (default: only when stderr is a "
                        "terminal, never in a pipe)")


def _reading_options():
    """The options for reading data files, shared by the commands that read one."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("reading data files (.csv, .tsv, .txt, .npy, .npz, "
                                      ".parquet)")
    group.add_argument("--columns", type=_names, metavar="A,B,...",
                       help="the columns to use, by header name or 0-based position (default: "
                       "all but --exclude-columns and --context-columns; for a model fitted "
                       "on named columns, those names)")
    group.add_argument("--exclude-columns", type=_names, metavar="A,B,...",
                       help="columns to leave out (ids, labels, text)")
    group.add_argument("--drop-na", action="store_true",
                       help="drop rows with a missing or non-finite value in a used column "
                       "(default: such a row is an error naming its line and column)")
    group.add_argument("--delimiter", type=_delimiter, metavar="CHAR",
                       help="the field delimiter: one character, 'tab' or 'whitespace' "
                       "(default: detected from the first line; tab for .tsv)")
    group.add_argument("--decimal", default=".", metavar="CHAR",
                       help="the decimal mark (default '.'; ',' for 1,5)")
    group.add_argument("--key", metavar="NAME", help="the array of an .npz archive")
    return parent


def build_parser():
    from .estimator import (BASES, EPOCHS, EPOCHS_LOW_DIM, ICA_MIN_FEATURES, LOW_DIM_FEATURES,
                            PATIENCE, PATIENCE_LOW_DIM, ROTATED_CANDIDATES,
                            WHITEN_CHOICE_MAX_ROWS)

    defaults = _fit_defaults()
    parser = argparse.ArgumentParser(
        prog=_prog(), description="refflow: reference normalizing flows in plain NumPy.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    reading = _reading_options()

    demo = sub.add_parser("demo", help="fit an NSF to two moons, run the oracle, draw a PNG",
                          description="Fit an NSF to two moons (held-out log-likelihood), run "
                          "the oracle over every bijector, write a PNG of the fit.")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    demo.add_argument("--epochs", type=_positive_int, default=60,
                      help="maximum training epochs (default 60; early stopping, patience 15)")
    demo.add_argument("--plot", default="refflow_demo.png", metavar="PNG",
                      help="where to write the figure (default refflow_demo.png)")
    demo.add_argument("--no-plot", dest="plot", action="store_const", const=None,
                      help="do not write a figure")
    _add_progress(demo)
    demo.set_defaults(run=cmd_demo)

    fit = sub.add_parser("fit", help="fit a FlowDensity to data and save it", parents=[reading],
                         description="Fit a FlowDensity (data standardised, the map folded into "
                         "the model) and write it to a model file (.npz, loads without pickle). "
                         "The defaults are FlowDensity's own.")
    fit.add_argument("data", help="a toy name (two_moons, circles, ...) or a data file")
    fit.add_argument("-o", "--output", required=True, metavar="MODEL.npz", help="model file to write")
    fit.add_argument("--model", default=defaults["flow"], help="flow family: nsf, maf, realnvp, "
                     f"glow, ... (default {defaults['flow']})")
    fit.add_argument("--layers", type=_positive_int, default=None, help="number of flow steps")
    fit.add_argument("--hidden", type=_hidden, default="auto",
                     help="conditioner widths, e.g. 64,64 (default auto: two layers of "
                     "max(64, n_features) units, which MADE's degree rule needs for wide data)")
    fit.add_argument("--option", type=_option, action="append", metavar="KEY=VALUE",
                     help="a further builder option (FlowDensity's flow_kwargs), e.g. "
                     "n_bins=16, scale=exp, hidden_degrees=random; repeatable")
    fit.add_argument("--context-columns", type=_names, metavar="A,B,...",
                     help="columns to condition on: fits the conditional density q(x | context)")
    fit.add_argument("--epochs", type=_positive_int_or_auto, default=defaults["epochs"],
                     help=f"maximum epochs; auto: {EPOCHS_LOW_DIM} for data of at most "
                     f"{LOW_DIM_FEATURES} features, {EPOCHS} above (default "
                     f"{defaults['epochs']})")
    fit.add_argument("--batch-size", type=_positive_int, default=defaults["batch_size"],
                     help=f"default {defaults['batch_size']}")
    fit.add_argument("--lr", type=_positive_float, default=defaults["lr"],
                     help=f"Adam learning rate (default {defaults['lr']:g})")
    fit.add_argument("--validation-fraction", type=_fraction,
                     default=defaults["validation_fraction"],
                     help=f"fraction held out for early stopping (default "
                     f"{defaults['validation_fraction']})")
    fit.add_argument("--patience", type=_non_negative_int_or_auto,
                     default=defaults["patience"],
                     help=f"epochs without validation improvement before stopping; auto: "
                     f"{PATIENCE_LOW_DIM} for data of at most {LOW_DIM_FEATURES} features, "
                     f"{PATIENCE} above (default {defaults['patience']}, as FlowDensity; 0: "
                     f"never stop early)")
    fit.add_argument("--lr-schedule", choices=("none", "plateau", "cosine"),
                     default=defaults["lr_schedule"] or "none",
                     help="plateau: where patience would stop training, resume once from "
                     "the best epoch at a tenth of the learning rate; cosine: the learning "
                     "rate falls to 0 along a half cosine over all the epochs' steps (default "
                     f"{defaults['lr_schedule'] or 'none'}, as FlowDensity)")
    fit.add_argument("--weight-decay", type=_non_negative_float,
                     default=defaults["weight_decay"],
                     help=f"decoupled weight decay, AdamW (default {defaults['weight_decay']:g})")
    fit.add_argument("--average", choices=("auto", "none", "ema"),
                     default=defaults["average"] or "none",
                     help="ema: also score a moving average of the parameters on the validation "
                     "rows after every epoch, and keep it when better (needs validation rows); "
                     f"auto: ema for data of at most {LOW_DIM_FEATURES} features, none above "
                     f"(default {defaults['average'] or 'none'})")
    fit.add_argument("--average-decay", type=_open_unit, default=defaults["average_decay"],
                     metavar="D",
                     help=f"the average's decay, in (0, 1) (default {defaults['average_decay']:g})")
    fit.add_argument("--base", choices=BASES, default=defaults["base"],
                     help=f"base distribution (default {defaults['base']})")
    fit.add_argument("--whiten", choices=("auto", "yes", "no"), default=defaults["whiten"],
                     help="decorrelate the standardised features (a Cholesky factor, folded "
                     f"into the model); auto: on at most {WHITEN_CHOICE_MAX_ROWS:,} rows fit "
                     "each candidate both ways and keep the better on the validation rows, "
                     f"above whiten (default {defaults['whiten']})")
    fit.add_argument("--rotation", choices=("auto", "ica", "none"),
                     default=defaults["rotation"] or "none",
                     help="ica: rotate the whitened rows to their independent components "
                     "(FastICA, folded into the model); auto: ica on at least "
                     f"{ICA_MIN_FEATURES} features and more than {WHITEN_CHOICE_MAX_ROWS:,} "
                     "rows, where --model auto also fits "
                     f"{', '.join(ROTATED_CANDIDATES)} to the rotated rows "
                     f"(default {defaults['rotation'] or 'none'})")
    fit.add_argument("--blend", choices=("auto", "yes", "no"), default=defaults["blend"],
                     help="score and sample with the candidate flows and a Gaussian mixture "
                     "(full covariances, k by BIC) blended, the weights by the validation "
                     "rows (the transform command maps with the kept flow); auto: with "
                     f"--model auto and no context (default {defaults['blend']})")
    fit.add_argument("--n", type=_positive_int, default=None, help="points drawn from a toy (5000)")
    fit.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    fit.add_argument("--plot", metavar="PNG", default=None,
                     help="draw the training curves and the fit (density and samples for 2-D "
                     "data, else a pair plot of data vs samples) to this image")
    _add_progress(fit)
    fit.set_defaults(run=cmd_fit)

    score = sub.add_parser("score", help="log-densities of data under a saved model",
                           parents=[reading],
                           description="Log-density of every row of the data under a model, in "
                           "nats, in the data's units; rows out of the model's float64 range "
                           "score -inf (with a warning).")
    score.add_argument("model", help="model file written by 'fit'")
    score.add_argument("data", help="a data file, or a toy name")
    score.add_argument("-o", "--output", metavar="SCORES.npy",
                       help="write the log-densities here (.npy, .csv, .tsv or .txt)")
    score.add_argument("--context-columns", type=_names, metavar="A,B,...",
                       help="the context columns (a conditional model fitted on named columns "
                       "finds them by name)")
    score.add_argument("--n", type=_positive_int, default=None, help="points drawn from a toy")
    score.add_argument("--seed", type=_non_negative_int, default=0, help="seed for a toy")
    score.add_argument("--dask", action="store_true",
                       help="score a .npy file larger than memory: memory-mapped, in chunks, "
                       "by dask (pip install 'refflow[dask]'); -o must then be a .npy file, "
                       "written chunk by chunk")
    score.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="with --dask: a dask.distributed scheduler address "
                       "(tcp://host:8786), or threads (the default), processes or sync")
    score.add_argument("--chunk-rows", type=_positive_int, default=None, metavar="N",
                       help="with --dask: rows per task (default: 64 MB of data)")
    _add_progress(score)
    score.set_defaults(run=cmd_score)

    sample = sub.add_parser("sample", help="draw samples from a saved model", parents=[reading],
                            description="Seeded samples from a model, written to a .npy, .csv, "
                            ".tsv or .txt file. The reading options apply to --context-file.")
    sample.add_argument("model", help="model file written by 'fit'")
    sample.add_argument("-n", type=_positive_int, required=True, help="number of samples")
    sample.add_argument("-o", "--output", required=True, metavar="SAMPLES.npy")
    sample.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    sample.add_argument("--context", metavar="V1,V2,...",
                        help="conditional models: one context row for every sample")
    sample.add_argument("--context-file", metavar="FILE",
                        help="conditional models: one context row per sample (-n rows)")
    _add_progress(sample)
    sample.set_defaults(run=cmd_sample)

    transform = sub.add_parser("transform", help="map data to the latent space of a model",
                               parents=[reading],
                               description="z = T^-1(x) for every row: the latent points, "
                               "standard normal under the model (FlowDensity.transform).")
    transform.add_argument("model", help="model file written by 'fit'")
    transform.add_argument("data", help="a data file, or a toy name")
    transform.add_argument("-o", "--output", required=True, metavar="LATENT.npy")
    transform.add_argument("--context-columns", type=_names, metavar="A,B,...")
    transform.add_argument("--n", type=_positive_int, default=None, help="points drawn from a toy")
    transform.add_argument("--seed", type=_non_negative_int, default=0, help="seed for a toy")
    _add_progress(transform)
    transform.set_defaults(run=cmd_transform)

    inverse = sub.add_parser("inverse-transform", help="map latent points back to the data",
                             parents=[reading],
                             description="x = T(z) for every row of a latent file "
                             "(FlowDensity.inverse_transform).")
    inverse.add_argument("model", help="model file written by 'fit'")
    inverse.add_argument("latent", help="a file of latent points (e.g. from 'transform')")
    inverse.add_argument("-o", "--output", required=True, metavar="X.npy")
    inverse.add_argument("--context-file", metavar="FILE",
                         help="conditional models: the context of each latent row (the "
                         "model's context columns by name, else every column)")
    _add_progress(inverse)
    inverse.set_defaults(run=cmd_inverse_transform)

    check = sub.add_parser("check", help="run the oracle over every registered bijector",
                           description="Round trips, log-dets vs slogdet of finite-difference "
                           "Jacobians and pullbacks vs finite differences for every registered "
                           "bijector; exit status 1 on any failure.")
    check.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    check.add_argument("--n", type=_positive_int, default=8, help="points per case (default 8)")
    check.set_defaults(run=cmd_check)

    aud = sub.add_parser("audit", help="run the oracle over every bijector a peer library "
                         "exports", description="Build every bijector class LIBRARY exports "
                         "with randomised parameters and check it (round trips, log-dets vs "
                         "slogdet of FD Jacobians, fwd + inv log-dets, gradients vs FD) in "
                         "float64 and float32; classes not built are listed with the reason. "
                         "Exit status 1 on any failure, 2 if LIBRARY is not installed.")
    aud.add_argument("library", choices=("zuko", "nflows", "normflows", "pyro", "flowjax",
                                         "distrax", "tfp"), metavar="LIBRARY",
                     help="zuko, nflows, normflows, pyro, flowjax, distrax or tfp")
    aud.add_argument("--json", metavar="PATH.json", default=None, help="write the rows as JSON")
    aud.add_argument("--markdown", metavar="PATH.md", default=None,
                     help="write the report as Markdown (a header with the command, versions "
                     "and date)")
    aud.add_argument("--only", type=_list_of("class names"), metavar="CLASS,...", default=None,
                     help="audit these classes only")
    aud.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    aud.add_argument("--dtypes", type=_list_of("dtypes (float64, float32)",
                                              ok=lambda v: v in ("float64", "float32")), metavar="DTYPE,...", default=("float64", "float32"),
                     help="float64 and/or float32 (default both)")
    aud.add_argument("--sizes", type=_list_of("integers >= 2", int, lambda v: v >= 2), metavar="N,...", default=(2, 3),
                     help="dimensions to build (default 2,3; some recipes fix their own)")
    aud.add_argument("--heavy", action="store_true",
                     help="also the recipes that take CPU minutes per check (zuko's "
                     "bisection-based NAF, UNAF, SOSPF, BPF)")
    aud.add_argument("--progress", action="store_true", help="print a line per case as it ends")
    aud.set_defaults(run=cmd_audit)

    pot = sub.add_parser("potentials", help="reverse-KL fits to the Rezende-Mohamed potentials",
                         description="Fit stacks of planar layers to U1-U4 (Rezende & Mohamed "
                         "2015, Figure 3) by reverse KL; print KL estimates and standard errors.")
    pot.add_argument("names", nargs="*", type=_potential, metavar="NAME",
                     help="which potentials: U1, U2, U3, U4 (default all)")
    pot.add_argument("--layers", type=_positive_int, default=32, help="planar layers (default 32)")
    pot.add_argument("--steps", type=_positive_int, default=None,
                     help="optimizer steps (default 4000)")
    pot.add_argument("--seed", type=_non_negative_int, default=0)
    pot.add_argument("--plot-dir", default=None, metavar="DIR",
                     help="write potential_<name>.png here (created if missing)")
    _add_progress(pot)
    pot.set_defaults(run=cmd_potentials)
    return parser


def _one_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv=None, out=_say):
    """Run the command line; returns the exit status (argparse exits 2 on usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .training import TrainingDiverged

    with warnings.catch_warnings(record=True) as caught:
        # every warning is recorded (and printed as one line below), except the notices meant
        # for developers of the libraries used, which a command-line user cannot act on
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning,
                         ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            status = args.run(args, out)
        except KeyboardInterrupt:
            print(f"refflow {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except (CommandError, TrainingDiverged, ValueError, TypeError, FileNotFoundError,
                ImportError, OSError) as exc:
            if os.environ.get("REFFLOW_TRACEBACK", "").strip() == "1":
                raise
            print(f"refflow {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 1
    shown = []
    for warning in caught:
        text = _one_line(warning.message)
        if text not in shown:
            shown.append(text)
            print(f"refflow {args.command}: warning: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
