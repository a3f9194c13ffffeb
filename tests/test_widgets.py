"""The explorers of scorelab.widgets: each builds, its drawing function draws, bad input raises."""

from __future__ import annotations

import ipywidgets
import matplotlib.pyplot as plt
import pytest
import torch

from scorelab import widgets
from scorelab.densities import GaussianMixture
from scorelab.langevin import langevin_dynamics
from scorelab.metrics import mode_weights

EXPLORERS = {
    widgets.mixture_explorer: {"weight", "separation"},
    widgets.langevin_explorer: {"step_size", "n_steps"},
    widgets.noise_level_explorer: {"sigma"},
    widgets.dsm_explorer: {"sigma"},
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("explorer", EXPLORERS, ids=lambda f: f.__name__)
def test_explorer_builds_with_its_sliders(explorer):
    widget = explorer()
    assert isinstance(widget, ipywidgets.interactive)
    # ipywidgets 8 draws at construction, 7 when the widget is first displayed: draw explicitly
    widget.update()
    assert set(widget.kwargs) == EXPLORERS[explorer]
    sliders = [child for child in widget.children if hasattr(child, "continuous_update")]
    assert len(sliders) == len(EXPLORERS[explorer])
    assert not any(slider.continuous_update for slider in sliders)  # redraw on release only


def test_moving_a_slider_redraws():
    widget = widgets.noise_level_explorer(sigma=1.0)
    widget.update()
    image = next(child for child in widget.children if isinstance(child, ipywidgets.Image))
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")
    before = plt.get_fignums()
    widget.children[0].value = 10.0
    assert widget.kwargs["sigma"] == pytest.approx(10.0)
    assert bytes(image.value).startswith(b"\x89PNG") and bytes(image.value) != first
    assert plt.get_fignums() == before  # each redraw closes its figure
    assert widget.children[-1] is widget.out  # where an error would show


@pytest.mark.parametrize("weight, separation", [(0.05, 0.5), (0.5, 4.0), (0.95, 8.0)])
def test_draw_mixture(weight, separation):
    ax = widgets.draw_mixture(plt.figure().add_subplot(), weight, separation)
    assert f"weight {weight:.2f}" in ax.get_title()
    assert ax.images and ax.collections  # heatmap and arrows


def test_two_mode_mixture_geometry():
    mixture = widgets.two_mode_mixture(0.3, separation=6.0)
    assert float((mixture.means[0] - mixture.means[1]).norm()) == pytest.approx(6.0)
    assert mixture.weights.tolist() == pytest.approx([0.3, 0.7])


@pytest.mark.parametrize("step_size, n_steps", [(0.001, 1), (0.05, 50), (0.5, 100)])
def test_draw_langevin_reports_the_share_of_its_particles(step_size, n_steps):
    ax = widgets.draw_langevin(plt.figure().add_subplot(), step_size, n_steps, n_particles=200)
    share = float(ax.get_title().split("\n")[1].split()[0])
    # The same run by hand: the start near (3.5, -3.5), the chapter's 0.7/0.3 mixture.
    mixture = GaussianMixture(torch.tensor([0.7, 0.3]), torch.tensor([[-1.2, -0.6], [1.2, 0.6]]),
                              torch.tensor([0.7, 0.7]))
    generator = torch.Generator().manual_seed(0)
    x0 = torch.tensor([3.5, -3.5]) + 0.3 * torch.randn(200, 2, generator=generator)
    x = langevin_dynamics(mixture.score, x0, step_size, n_steps, generator=generator, progress=False)
    assert share == pytest.approx(float(mode_weights(x, mixture.means)[0]), abs=0.005)
    points = ax.collections[-1].get_offsets()  # the particles drawn
    assert points.shape == (200, 2) and abs(points - x.numpy()).max() < 1e-5


def test_draw_langevin_mixes_with_enough_steps():
    # 200 particles: the share near the heavy mode has standard error sqrt(0.21/200) = 0.032
    ax = widgets.draw_langevin(plt.figure().add_subplot(), 0.1, 600, n_particles=200)
    share = float(ax.get_title().split("\n")[1].split()[0])
    assert abs(share - 0.7) < 4 * 0.033


def _share(ax) -> float:
    return float(ax.get_title().rsplit(": ", 1)[1])


def test_draw_noise_level_weights_appear_as_sigma_grows():
    shares = [_share(widgets.draw_noise_level(plt.figure().add_subplot(), sigma))
              for sigma in (0.1, 1.0, 5.0, 30.0)]
    assert shares[0] < 0.01
    assert shares == sorted(shares)
    assert shares[-1] == pytest.approx(0.8, abs=0.05)  # the merged modes carry the weights


def test_draw_dsm_bias_grows_with_sigma():
    biases = [float(widgets.draw_dsm(plt.figure().add_subplot(), sigma, n_samples=500)
                    .get_title().rsplit(" ", 1)[1]) for sigma in (0.01, 0.3, 1.0, 3.0)]
    assert biases[0] < 1e-3
    assert biases == sorted(biases)


def test_small_multiples_one_panel_per_setting():
    settings = [{"sigma": s} for s in (0.5, 2.0, 8.0)]
    fig = widgets.small_multiples(widgets.draw_noise_level, settings, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in visible] == ["sigma 0.50", "sigma 2.00",
                                                                "sigma 8.00"]


@pytest.mark.parametrize("call, argument", [
    (lambda: widgets.mixture_explorer(weight=1.0), "weight"),
    (lambda: widgets.mixture_explorer(separation=-1.0), "separation"),
    (lambda: widgets.langevin_explorer(step_size=0.0), "step_size"),
    (lambda: widgets.langevin_explorer(n_steps=2.5), "n_steps"),
    (lambda: widgets.noise_level_explorer(sigma=float("nan")), "sigma"),
    (lambda: widgets.dsm_explorer(sigma=-0.1), "sigma"),
    (lambda: widgets.draw_mixture(plt.figure().add_subplot(), weight="heavy"), "weight"),
    (lambda: widgets.draw_langevin(plt.figure().add_subplot(), n_particles=0), "n_particles"),
    (lambda: widgets.small_multiples(widgets.draw_dsm, []), "settings"),
    (lambda: widgets.draw_dsm(plt.figure().add_subplot(), error_max=0), "error_max"),
    (lambda: widgets.small_multiples("draw", [{}]), "draw"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
