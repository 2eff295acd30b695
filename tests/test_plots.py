"""refflow.plots: heatmaps, scatter plots, loss curves, files (matplotlib optional)."""

import sys

import numpy as np
import pytest

from refflow import Affine, Flow, StandardNormal
from refflow.data.potentials import rezende_potential
from refflow.plots import plot_density_2d, plot_history, plot_samples, save_figure


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
])
def test_missing_matplotlib_gives_an_install_hint(monkeypatch, call):
    for name in ("matplotlib", "matplotlib.axes", "matplotlib.figure",
                 "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # "import matplotlib..." now fails
    with pytest.raises(ImportError, match='needs matplotlib.*pip install "refflow\\[plot\\]"'):
        call()
