"""Command line: ``python -m refflow {demo,fit,score,sample,check,potentials} ...``.

``demo``
    The README's main job: fits a neural spline flow (``FlowDensity(flow="nsf")``) to a seeded
    two-moons sample, prints the held-out log-likelihood, runs the oracle over every registered
    bijector and, when matplotlib is installed, writes a PNG of data, model density and samples.
    Exit status 1 if an oracle check fails or the model is no better than a Gaussian.
``fit``
    Fits a ``FlowDensity`` to a toy (by name) or to a ``.npy``/``.csv`` file and saves it.
``score``
    Log-densities of the rows of a data file under a saved model (to a ``.npy``) and a summary.
``sample``
    Seeded samples from a saved model to a ``.npy``.
``check``
    The oracle over every registered bijector; exit status 1 on any failure.
``potentials``
    Fits planar flows to the Rezende-Mohamed potentials U1-U4 by reverse KL.

Errors (bad data, a damaged model file, a diverging fit) print one line and exit with status 1
(``REFFLOW_TRACEBACK=1`` shows the traceback instead); usage errors exit with status 2
(argparse).
"""

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np

__all__ = ["main"]


class CommandError(Exception):
    """A failure to report as one line (no traceback)."""


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
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _hidden(text):
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 64,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer widths such as 64,64, got {text!r}")
    return sizes


def read_data(source, n=None, seed=0):
    """Rows of a toy (by name, ``n`` seeded samples) or of a ``.npy`` / ``.csv`` file."""
    from . import data as datasets

    if source in datasets.TOYS:
        return datasets.toy(source, 5000 if n is None else n, rng=seed)
    if not os.path.exists(source):
        raise CommandError(f"{source!r} is neither a toy ({', '.join(datasets.TOYS)}) nor an "
                           f"existing file")
    lower = source.lower()
    try:
        if lower.endswith(".npy"):
            data = np.load(source, allow_pickle=False)
        elif lower.endswith((".csv", ".txt")):
            data = _read_csv(source)
        else:
            raise CommandError(f"{source}: unsupported file type (use .npy or .csv)")
    except (ValueError, OSError) as exc:
        raise CommandError(f"{source}: cannot read the data: {exc}") from None
    if data.ndim == 1:
        data = data[:, None]
    # Real numbers only: complex data would lose its imaginary part (with a ComplexWarning).
    if data.ndim != 2 or data.shape[0] == 0 or data.dtype.kind not in "biuf":
        raise CommandError(f"{source}: expected a non-empty numeric 2-D array (rows = points), "
                           f"got shape {data.shape} and dtype {data.dtype}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).any(axis=1).sum())
        raise CommandError(f"{source}: {bad} rows hold NaN or inf")
    return np.asarray(data, dtype=np.float64)


def _read_csv(path):
    """Comma-separated numbers; a first line that is not numeric is taken as a header."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        [float(s) for s in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1
    # An empty file makes loadtxt warn; read_data then reports the empty array as one line.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input contained no data", category=UserWarning)
        return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)


def _load_model(path):
    from . import io
    from .estimator import FlowDensity
    from .distributions import Flow

    try:
        model = io.load(path)
    except FileNotFoundError:
        raise CommandError(f"{path}: no such model file") from None
    if not isinstance(model, (FlowDensity, Flow)):
        raise CommandError(f"{path}: holds a {type(model).__name__}, not a FlowDensity or Flow")
    return model


def _write_npy(path, array):
    from .io import atomic_write

    if not path.lower().endswith(".npy"):
        raise CommandError(f"{path}: the output must be a .npy file")
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


# -------------------------------------------------------------------------------- commands
def cmd_fit(args, out):
    from . import io
    from .estimator import FlowDensity

    x = read_data(args.data, n=args.n, seed=args.seed)
    model = FlowDensity(
        flow=args.model, n_layers=args.layers, hidden=args.hidden, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, validation_fraction=args.validation_fraction,
        patience=args.patience, random_state=args.seed,
        progress=None if args.progress else False,
    )
    start = time.perf_counter()
    model.fit(x)
    seconds = time.perf_counter() - start
    h = model.history_
    out(f"fit: {args.model} on {args.data} ({x.shape[0]} x {x.shape[1]}), "
        f"{len(h.train_nll)} epochs in {seconds:.1f} s"
        + (" (stopped early)" if h.stopped_early else ""))
    out(f"  final train NLL {h.train_nll[-1]:.4f}"
        + (f", best validation NLL {min(h.val_nll):.4f} (epoch {h.best_epoch})" if h.val_nll else ""))
    out(f"  mean log-likelihood of the data: {model.score(x):.4f}")
    io.save(args.output, model)
    out(f"  model written to {args.output}")
    return 0


def cmd_score(args, out):
    model = _load_model(args.model)
    x = read_data(args.data, n=args.n, seed=args.seed)
    scores = model.score_samples(x) if hasattr(model, "score_samples") else model.log_prob(x)
    if args.output:
        _write_npy(args.output, scores)
    # Points far outside the model can score -inf (the density underflows); the summary then
    # shows inf/nan rather than emitting a RuntimeWarning from std().
    with np.errstate(invalid="ignore", over="ignore"):
        mean, std = scores.mean(), scores.std()
    out(f"score: {x.shape[0]} points; mean log-density {mean:.4f} "
        f"(std {std:.4f}, min {scores.min():.4f}, max {scores.max():.4f})"
        + (f"; written to {args.output}" if args.output else ""))
    return 0


def cmd_sample(args, out):
    model = _load_model(args.model)
    if hasattr(model, "score_samples"):
        samples = model.sample(args.n, random_state=args.seed)
    else:
        samples = model.sample(args.n, rng=args.seed)
    _write_npy(args.output, samples)
    out(f"sample: {args.n} samples (seed {args.seed}) of dimension {samples.shape[1]} written "
        f"to {args.output}")
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
        f"validation, 2000 test, seed {seed}): {len(model.history_.train_nll)} epochs in "
        f"{seconds:.1f} s")
    out(f"  mean test log-likelihood {test_ll:.4f}  (true density: {true_ll:.4f}; best single "
        f"Gaussian: {gauss:.4f})")
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
    model, train, _, test_ll, gauss, _ = fit_demo(seed=args.seed, epochs=args.epochs, out=out)
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

    for name in args.names:
        plot = None if args.plot_dir is None else os.path.join(args.plot_dir, f"potential_{name}.png")
        options = {} if args.steps is None else {"steps": args.steps}
        result = fit_potential(name, n_layers=args.layers, rng=args.seed, plot=plot, **options)
        out(f"{name}: {args.layers} planar layers, KL(q || p) = {result['kl_divergence']:.4f} "
            f"(E_q[log q - log p~] = {result['kl']:.4f} +/- {result['kl_stderr']:.4f}, "
            f"log Z = {result['log_normalizer']:.4f})" + (f"; figure {plot}" if plot else ""))
    return 0


# ---------------------------------------------------------------------------------- parser
def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m refflow",
        description="refflow: reference normalizing flows in plain NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    demo.set_defaults(run=cmd_demo)

    fit = sub.add_parser("fit", help="fit a FlowDensity to data and save it",
                         description="Fit a FlowDensity (data standardised, the map folded into "
                         "the model) and write it to a model file (.npz, loads without pickle).")
    fit.add_argument("data", help="a toy name (two_moons, circles, ...) or a .npy/.csv file")
    fit.add_argument("-o", "--output", required=True, metavar="MODEL.npz", help="model file to write")
    fit.add_argument("--model", default="nsf", help="flow family: nsf, maf, realnvp, glow, ... "
                     "(default nsf)")
    fit.add_argument("--layers", type=_positive_int, default=None, help="number of flow steps")
    fit.add_argument("--hidden", type=_hidden, default=(64, 64), help="conditioner widths, e.g. 64,64")
    fit.add_argument("--epochs", type=_positive_int, default=100, help="maximum epochs (default 100)")
    fit.add_argument("--batch-size", type=_positive_int, default=256, help="default 256")
    fit.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (1e-3)")
    fit.add_argument("--validation-fraction", type=_fraction, default=0.1,
                     help="fraction held out for early stopping (default 0.1)")
    fit.add_argument("--patience", type=_positive_int, default=20,
                     help="epochs without validation improvement before stopping (default 20)")
    fit.add_argument("--n", type=_positive_int, default=None, help="points drawn from a toy (5000)")
    fit.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    fit.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar (it is shown only on a terminal anyway)")
    fit.set_defaults(run=cmd_fit)

    score = sub.add_parser("score", help="log-densities of data under a saved model",
                           description="Log-density of every row of the data under a model.")
    score.add_argument("model", help="model file written by 'fit'")
    score.add_argument("data", help="a .npy/.csv file, or a toy name")
    score.add_argument("-o", "--output", metavar="SCORES.npy", help="write the log-densities here")
    score.add_argument("--n", type=_positive_int, default=None, help="points drawn from a toy")
    score.add_argument("--seed", type=_non_negative_int, default=0, help="seed for a toy")
    score.set_defaults(run=cmd_score)

    sample = sub.add_parser("sample", help="draw samples from a saved model",
                            description="Seeded samples from a model, written to a .npy file.")
    sample.add_argument("model", help="model file written by 'fit'")
    sample.add_argument("-n", type=_positive_int, required=True, help="number of samples")
    sample.add_argument("-o", "--output", required=True, metavar="SAMPLES.npy")
    sample.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    sample.set_defaults(run=cmd_sample)

    check = sub.add_parser("check", help="run the oracle over every registered bijector",
                           description="Round trips, log-dets vs slogdet of finite-difference "
                           "Jacobians and pullbacks vs finite differences for every registered "
                           "bijector; exit status 1 on any failure.")
    check.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    check.add_argument("--n", type=_positive_int, default=8, help="points per case (default 8)")
    check.set_defaults(run=cmd_check)

    pot = sub.add_parser("potentials", help="reverse-KL fits to the Rezende-Mohamed potentials",
                         description="Fit stacks of planar layers to U1-U4 (Rezende & Mohamed "
                         "2015, Figure 3) by reverse KL; print KL estimates and standard errors.")
    pot.add_argument("names", nargs="*", default=["U1", "U2", "U3", "U4"],
                     choices=["U1", "U2", "U3", "U4"], help="which potentials (default all)")
    pot.add_argument("--layers", type=_positive_int, default=32, help="planar layers (default 32)")
    pot.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps")
    pot.add_argument("--seed", type=_non_negative_int, default=0)
    pot.add_argument("--plot-dir", default=None, help="write potential_<name>.png here")
    pot.set_defaults(run=cmd_potentials)
    return parser


def main(argv=None, out=print):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .training import TrainingDiverged

    try:
        return args.run(args, out)
    except (CommandError, TrainingDiverged, ValueError, FileNotFoundError, ImportError,
            OSError) as exc:
        if os.environ.get("REFFLOW_TRACEBACK", "").strip() == "1":
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"refflow {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
