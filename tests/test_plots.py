"""refflow.plots: heatmaps, scatter plots, loss curves, files (matplotlib optional)."""

import sys

import numpy as np
import pytest

from refflow import Affine, Flow, StandardNormal
from refflow.data.potentials import rezende_potential
from refflow.plots import pair_plot, plot_density_2d, plot_history, plot_samples, save_figure


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


@pytest.fixture
def flow():
    f = Flow(StandardNormal(2), Affine(2))
    f.params["bijector.shift"] = [0.5, -1.0]
    f.params["bijector.log_scale"] = [0.2, -0.3]
    return f


def grid(bounds, resolution):
    (x0, x1), (y0, y1) = bounds
    xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # [i, j] at (x_j, y_i)
    return xx, yy


# ---------------------------------------------------------------------- plot_density_2d
def test_heatmap_is_the_density_on_the_grid(mpl, flow):
    from matplotlib.figure import Figure

    bounds = ((-3.0, 2.0), (-4.0, 1.5))
    fig = plot_density_2d(flow, bounds=bounds, resolution=37, title="a flow")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heat = np.asarray(ax.images[0].get_array())
    xx, yy = grid(bounds, 37)
    expected = np.exp(flow.log_prob(np.stack([xx.ravel(), yy.ravel()], axis=1))).reshape(37, 37)
    np.testing.assert_allclose(heat, expected, rtol=1e-14)
    # pixels centred on the grid points, axes limited to the bounds
    dx, dy = 5.0 / 36, 5.5 / 36
    np.testing.assert_allclose(ax.images[0].get_extent(),
                               [-3 - dx / 2, 2 + dx / 2, -4 - dy / 2, 1.5 + dy / 2])
    assert ax.get_xlim() == (-3.0, 2.0) and ax.get_ylim() == (-4.0, 1.5)
    assert ax.get_title() == "a flow"


def test_heatmap_of_a_log_target_and_a_plain_callable(mpl):
    pot = rezende_potential("U2")
    xx, yy = grid(((-4, 4), (-4, 4)), 25)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    expected = np.exp(pot(points)[0]).reshape(25, 25)
    for log_prob in (pot, pot.log_prob, lambda x: pot(x)[0]):
        fig = plot_density_2d(log_prob, resolution=25)
        np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), expected,
                                   rtol=1e-14)


def test_density_into_given_axes_with_samples(mpl, flow):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    samples = flow.sample(30, rng=0)
    out = plot_density_2d(flow, samples=samples, ax=ax, resolution=10)
    assert out is ax
    np.testing.assert_array_equal(ax.collections[-1].get_offsets(), samples)


def test_density_bad_inputs(mpl, flow):
    with pytest.raises(ValueError, match="plot_density_2d: bounds must be finite with min < max"):
        plot_density_2d(flow, bounds=((1, 0), (0, 1)))
    with pytest.raises(ValueError, match="plot_density_2d: bounds must be \\(\\(x_min"):
        plot_density_2d(flow, bounds=(0, 1))
    for resolution, error in [(1, ValueError), (2.5, TypeError), (True, TypeError),
                              ("200", TypeError)]:
        with pytest.raises(error, match="resolution must be an integer"):
            plot_density_2d(flow, resolution=resolution)
    with pytest.raises(ValueError, match="returned shape \\(2,\\) for 100 points"):
        plot_density_2d(lambda x: np.zeros(2), resolution=10)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        plot_density_2d(lambda x: np.full(len(x), np.nan), resolution=10)
    with pytest.raises(ValueError, match="overflows"):
        plot_density_2d(lambda x: np.full(len(x), 1e3), resolution=10)
    with pytest.raises(TypeError, match="log_prob must be a Flow"):
        plot_density_2d(3.0)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plot_density_2d(flow, ax="axes", resolution=10)
    with pytest.raises(ValueError, match="samples must have shape \\(n, 2\\)"):
        plot_density_2d(flow, samples=np.zeros((5, 3)), resolution=10)
    with pytest.raises(TypeError, match="title must be a str"):
        plot_density_2d(flow, title=1, resolution=10)


def test_minus_infinity_is_zero_density(mpl):
    fig = plot_density_2d(lambda x: np.where(x[:, 0] > 0, 0.0, -np.inf), resolution=4,
                          bounds=((-1, 1), (-1, 1)))
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), [[0, 0, 1, 1]] * 4)


# -------------------------------------------------------------------------- plot_samples
def test_samples_from_points_and_from_a_flow(mpl, flow):
    points = np.random.default_rng(0).normal(size=(40, 2))
    fig = plot_samples(points, bounds=((-2, 2), (-3, 3)), title="pts")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), points)
    assert ax.get_xlim() == (-2, 2) and ax.get_ylim() == (-3, 3) and ax.get_title() == "pts"
    fig = plot_samples(flow, n=25, rng=3)
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_offsets(), flow.sample(25, rng=3))


def test_samples_bad_inputs(mpl, flow):
    with pytest.raises(ValueError, match="plot_samples: samples must have shape \\(n, 2\\)"):
        plot_samples(np.zeros(4))
    with pytest.raises(ValueError, match="plot_samples: samples must be finite"):
        plot_samples(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="n must be a positive int"):
        plot_samples(flow, n=0)
    with pytest.raises(ValueError, match="rng must be"):
        plot_samples(flow, rng="x")


# -------------------------------------------------------------------------- plot_history
class FakeHistory:
    """The attributes and as_dict of refflow.train.History that plot_history reads."""

    def __init__(self, train, val, best):
        self.train_nll, self.val_nll, self.best_epoch = train, val, best

    def as_dict(self):
        return {"train_nll": list(self.train_nll), "val_nll": list(self.val_nll),
                "best_epoch": self.best_epoch}


def test_history_of_fit(mpl):
    history = FakeHistory([3.0, 2.5, 2.2, 2.1], [3.1, 2.6, 2.4, 2.45], 2)
    for h in (history, history.as_dict()):
        fig = plot_history(h, title="fit")
        ax = fig.axes[0]
        labelled = {line.get_label(): line for line in ax.lines}
        np.testing.assert_array_equal(labelled["train NLL"].get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(labelled["train NLL"].get_ydata(), history.train_nll)
        np.testing.assert_array_equal(labelled["validation NLL"].get_ydata(), history.val_nll)
        # the best epoch (0-based 2) is marked, and labelled, at epoch 3 (epochs from 1)
        assert list(labelled["best epoch (3)"].get_xdata()) == [3, 3]
        assert ax.get_xlabel() == "epoch (from 1)" and ax.get_title() == "fit"


def test_history_of_train_fit_if_available(mpl):
    train = pytest.importorskip("refflow.train")
    history = train.History()
    history.train_nll, history.best_epoch = [2.0, 1.5], 1
    fig = plot_history(history)
    assert [line.get_label() for line in fig.axes[0].lines][0] == "train NLL"
    assert "validation NLL" not in [line.get_label() for line in fig.axes[0].lines]


def test_history_of_reverse_kl(mpl):
    kl = list(np.linspace(5.0, 1.0, 200) + np.sin(np.arange(200)))
    fig = plot_history({"kl": kl})
    ax = fig.axes[0]
    labelled = {line.get_label(): line for line in ax.lines}
    np.testing.assert_array_equal(labelled["KL estimate"].get_ydata(), kl)
    # running mean over 200 // 50 = 4 steps
    np.testing.assert_allclose(labelled["running mean"].get_ydata(),
                               [np.mean(kl[i - 3:i + 1]) for i in range(3, 200)], rtol=1e-13)
    np.testing.assert_array_equal(labelled["running mean"].get_xdata(), np.arange(4, 201))
    assert ax.get_xlabel() == "step"


def test_history_bad_inputs(mpl):
    with pytest.raises(TypeError, match="plot_history: history must be"):
        plot_history([1.0, 2.0])
    with pytest.raises(ValueError, match="neither 'train_nll'"):
        plot_history({"loss": [1.0]})
    with pytest.raises(ValueError, match="empty"):
        plot_history({"kl": []})
    with pytest.raises(ValueError, match="empty"):
        plot_history({"train_nll": [], "val_nll": []})
    with pytest.raises(ValueError, match="real numeric"):
        plot_history({"kl": ["a", "b"]})


def test_history_in_the_data_units(mpl):
    # a FlowDensity history: NLLs of the standardised data, drawn shifted to the data's units
    history = {"train_nll": [2.0, 1.5], "val_nll": [2.1, 1.7], "best_epoch": 1,
               "nll_shift": -0.75}
    ax = plot_history(history).axes[0]
    labelled = {line.get_label(): line for line in ax.lines}
    np.testing.assert_array_equal(labelled["train NLL"].get_ydata(), [1.25, 0.75])
    np.testing.assert_array_equal(labelled["validation NLL"].get_ydata(), [1.35, 0.95])
    assert ax.get_ylabel() == "mean NLL, nats per sample (data units)"
    with pytest.raises(ValueError, match=r"history\['nll_shift'\] must be a finite number"):
        plot_history(dict(history, nll_shift=float("inf")))


# ----------------------------------------------------------------------------- pair_plot
def test_pair_plot_grid_histograms_and_scatters(mpl):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3000, 3)) * [1.0, 2.0, 0.5]
    samples = rng.normal(size=(1000, 3))
    fig = pair_plot(data, samples, names=["a", "b", "c"], bins=15, max_points=500, rng=1,
                    title="fit")
    axes = np.array(fig.axes).reshape(3, 3)
    assert [[ax.axison for ax in row] for row in axes] == [[True, False, False],
                                                           [True, True, False],
                                                           [True, True, True]]
    for i in range(3):
        lo, hi = data[:, i].min(), data[:, i].max()
        data_bars, sample_bars = axes[i, i].containers
        # the bars are the densities of the data, and of the samples in the same bins
        expected, _ = np.histogram(data[:, i], bins=15, range=(lo, hi), density=True)
        np.testing.assert_allclose([b.get_height() for b in data_bars], expected, rtol=1e-12)
        expected, _ = np.histogram(samples[:, i], bins=15, range=(lo, hi), density=True)
        np.testing.assert_allclose([b.get_height() for b in sample_bars], expected, rtol=1e-12)
    # a lower panel: column j on x, row i on y; at most max_points rows of each set drawn
    data_points, sample_points = axes[2, 0].collections
    offsets = data_points.get_offsets()
    assert offsets.shape == (500, 2)
    assert {tuple(p) for p in offsets} <= {tuple(p) for p in data[:, [0, 2]]}
    assert sample_points.get_offsets().shape == (500, 2)
    assert [axes[2, j].get_xlabel() for j in range(3)] == ["a", "b", "c"]
    assert [axes[i, 0].get_ylabel() for i in (1, 2)] == ["b", "c"]
    assert fig.get_suptitle() == "fit"


def test_pair_plot_selects_features_and_draws_into_a_subfigure(mpl):
    from matplotlib.figure import Figure

    data = np.random.default_rng(0).normal(size=(200, 20))
    with pytest.raises(ValueError, match="20 features make a 20 x 20 grid; choose at most 12"):
        pair_plot(data)
    outer = Figure()
    left, right = outer.subfigures(1, 2)
    sub = pair_plot(data, features=[4, 0], figure=right)
    assert sub is right and len(right.axes) == 4 and len(left.axes) == 0
    assert right.axes[2].get_xlabel() == "x4" and right.axes[3].get_xlabel() == "x0"
    single = pair_plot(data[:, :1])
    assert len(single.axes) == 1 and len(single.axes[0].containers) == 1


def test_pair_plot_bad_inputs(mpl):
    data = np.zeros((5, 3))
    for kwargs, error, match in [
        ({"samples": np.zeros((5, 2))}, ValueError, "samples has 2 columns, data has 3"),
        ({"features": [0, 3]}, ValueError, "distinct column indices below 3"),
        ({"features": "ab"}, TypeError, "features must be a sequence"),
        ({"names": ["a"]}, ValueError, "names has 1 entries"),
        ({"bins": 0}, ValueError, "bins"),
        ({"figure": "fig"}, TypeError, "figure must be a matplotlib Figure"),
    ]:
        with pytest.raises(error, match=match):
            pair_plot(data, **kwargs)
    with pytest.raises(ValueError, match="data must be finite"):
        pair_plot(np.array([[np.nan, 1.0]]))


# --------------------------------------------------------------------------- save_figure
def test_save_figure_writes_png(mpl, tmp_path, flow):
    fig = plot_density_2d(flow, resolution=10)
    path = save_figure(fig, tmp_path / "density.png")
    assert path == str(tmp_path / "density.png")
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_figure(fig.axes[0], str(tmp_path / "again.pdf"))  # an Axes: its figure
    assert (tmp_path / "again.pdf").read_bytes()[:4] == b"%PDF"


def test_save_figure_bad_inputs(mpl, tmp_path, flow):
    fig = plot_density_2d(flow, resolution=10)
    with pytest.raises(ValueError, match="save_figure: the directory .* does not exist"):
        save_figure(fig, tmp_path / "missing" / "x.png")
    with pytest.raises(TypeError, match="expected a matplotlib Figure or Axes"):
        save_figure("figure", tmp_path / "x.png")
    with pytest.raises(TypeError, match="path must be a str"):
        save_figure(fig, 3)
    with pytest.raises(ValueError, match="dpi must be a finite positive number"):
        save_figure(fig, tmp_path / "x.png", dpi=0)
    with pytest.raises(ValueError, match="no known image suffix"):
        save_figure(fig, tmp_path / "x.npz")


# -------------------------------------------------------------------- global state
def test_no_pyplot_and_no_global_state_change(mpl, flow, tmp_path):
    before = dict(mpl.rcParams)
    had_pyplot = "matplotlib.pyplot" in sys.modules
    fig = plot_density_2d(flow, resolution=10, samples=flow.sample(5, rng=0))
    plot_samples(flow, n=5, rng=0, ax=fig.axes[0])
    plot_history({"kl": [1.0, 0.5]})
    save_figure(fig, tmp_path / "f.png")
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert dict(mpl.rcParams) == before
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    assert isinstance(fig.canvas, FigureCanvasAgg)


@pytest.mark.parametrize("call", [
    lambda: plot_density_2d(lambda x: np.zeros(len(x))),
    lambda: plot_samples(np.zeros((3, 2))),
    lambda: plot_history({"kl": [1.0]}),
    lambda: save_figure(object(), "x.png"),
    lambda: pair_plot(np.zeros((3, 3))),
])
def test_missing_matplotlib_gives_an_install_hint(monkeypatch, call):
    for name in ("matplotlib", "matplotlib.axes", "matplotlib.figure",
                 "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # "import matplotlib..." now fails
    with pytest.raises(ImportError, match='needs matplotlib.*pip install "refflow\\[plot\\]"'):
        call()


def test_history_marks_the_learning_rate_drops(mpl):
    # lr_schedule="plateau": lowered after epochs 4 and 7 (0-based), drawn between the
    # drop's epoch and the next (5.5 and 8.5, epochs from 1); one legend entry for both
    history = {"train_nll": [2.0] * 10, "val_nll": [2.1] * 10, "best_epoch": 3,
               "lr_drops": [4, 7]}
    ax = plot_history(history).axes[0]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in dashed] == [[5.5, 5.5], [8.5, 8.5]]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend.count("learning rate lowered") == 1
    ax = plot_history(dict(history, lr_drops=[])).axes[0]
    assert not [line for line in ax.lines if line.get_linestyle() == "--"]
    for bad in ([1.5], [True], "4", None):
        with pytest.raises(ValueError, match=r"history\['lr_drops'\] must be a list of epochs"):
            plot_history(dict(history, lr_drops=bad))
