"""circular= on the spline layers: the circle's boundary condition and the peers' layouts."""

import numpy as np
import pytest

from refflow import MaskedSplineAutoregressive, SplineCoupling
from refflow.bijectors.spline_maps import get_spline_map

# values and log-dets of one pass at +-pi: a few roundings of the same spline expressions
SAME = 1e-12


def _randomized(layer, seed):
    rng = np.random.default_rng(seed)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.7, size=value.shape)
    return layer


def test_durkan_circular_map_by_hand():
    # normflows' tails="circular": u_d of size K padded by its first entry, then 1e-3 + softplus
    m = get_spline_map("durkan", n_bins=4, bound=np.pi, end_slopes="circular")
    ud = np.array([0.3, -1.2, 2.0, 0.5])
    _, _, dk = m(np.zeros(4), np.zeros(4), ud)
    expected = 1e-3 + np.log1p(np.exp(np.append(ud, ud[0])))
    np.testing.assert_allclose(dk, expected, rtol=1e-15)


@pytest.mark.parametrize("make", [
    lambda: SplineCoupling(3, hidden=(8,), n_bins=4, circular=[0, 2], rng=0),
    lambda: SplineCoupling(3, hidden=(8,), n_bins=4, circular=True, parameterization="distrax",
                           rng=0),
    lambda: MaskedSplineAutoregressive(2, hidden=(8,), n_bins=4, circular=True, rng=0),
])
def test_circular_coordinates_map_the_circle_with_matching_end_slopes(make):
    layer = _randomized(make(), 1)
    circ = np.flatnonzero(layer._circular)
    x = np.random.default_rng(2).uniform(-1.0, 1.0, size=(1, layer.dim))
    lo, hi = x.copy(), x.copy()
    lo[0, circ], hi[0, circ] = -np.pi, np.pi
    # the conditioner sees the same inputs at -pi and pi only through sin/cos (coupling) or
    # for the last coordinate (autoregressive): compare the coordinates it conditions alike
    z_lo, ld_lo = layer.inverse(lo)
    z_hi, ld_hi = layer.inverse(hi)
    moved = circ if isinstance(layer, SplineCoupling) else circ[-1:]
    np.testing.assert_allclose(z_lo[0, moved], -np.pi, rtol=0, atol=SAME)
    np.testing.assert_allclose(z_hi[0, moved], np.pi, rtol=0, atol=SAME)
    if isinstance(layer, SplineCoupling):   # d_K = d_0: the density is continuous on the circle
        np.testing.assert_allclose(ld_lo, ld_hi, rtol=0, atol=SAME)


def test_mixed_coupling_layout_is_normflows_list_of_tails():
    # durkan, one circular and one linear transformed coordinate: 3K + 1 outputs each
    layer = SplineCoupling(4, hidden=(8,), n_bins=5, circular=[3], rng=0)
    assert layer._n_params == 3 * 5 + 1
    assert layer.conditioner.params["w0"].shape[1] == 2          # identity coords 0, 1: linear
    layer = SplineCoupling(4, hidden=(8,), n_bins=5, circular=[0, 3], rng=0)
    assert layer.conditioner.params["w0"].shape[1] == 3          # angle 0 as (sin, cos)


def test_circular_inputs_outside_the_circle_are_refused():
    layer = SplineCoupling(2, hidden=(4,), n_bins=3, circular=True, rng=0)
    with pytest.raises(ValueError, match=r"SplineCoupling.*\[-pi, pi\]"):
        layer.inverse(np.array([[0.0, 3.2]]))
    with pytest.raises(ValueError, match="MaskedSplineAutoregressive: circular must be None or"):
        MaskedSplineAutoregressive(3, circular=[0])
    with pytest.raises(ValueError, match="SplineCoupling: circular coordinates need a map"):
        SplineCoupling(2, circular=True, parameterization="flowjax")
