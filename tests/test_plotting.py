"""scorelab.plotting: each function draws what it should on small inputs, and rejects bad input."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.animation import FuncAnimation
from matplotlib.collections import PathCollection
from matplotlib.quiver import Quiver

from scorelab import plotting


class StandardGaussian:
    """N(0, I) in 2-D: a density with a closed-form score, independent of scorelab.densities."""

    def log_prob(self, x):
        return -0.5 * (x**2).sum(dim=1) - np.log(2 * np.pi)

    def score(self, x):
        return -x


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_grid_points_cover_the_window():
    xs, ys, points = plotting.grid_points((-1, 1), (0, 2), 5)
    assert points.shape == (25, 2)
    assert points[:, 0].min() == -1 and points[:, 0].max() == 1
    assert points[:, 1].min() == 0 and points[:, 1].max() == 2
    assert np.allclose(xs, np.linspace(-1, 1, 5)) and np.allclose(ys, np.linspace(0, 2, 5))


def test_plot_density_heatmap_has_the_density_values(ax):
    out = plotting.plot_density(ax, StandardGaussian(), (-3, 3), (-3, 3), n_grid=31)
    assert out is ax
    (image,) = ax.get_images()
    values = image.get_array()
    assert values.shape == (31, 31)
    assert image.get_extent() == [-3, 3, -3, 3]
    # the centre of the grid is the origin, where N(0, I) has density 1 / (2 pi)
    assert values[15, 15] == pytest.approx(1 / (2 * np.pi), rel=1e-5)
    assert values.max() == values[15, 15]


def test_plot_density_accepts_a_log_prob_callable_and_draws_contours(ax):
    plotting.plot_density(ax, StandardGaussian().log_prob, (-3, 3), (-3, 3), n_grid=40,
                          kind="contour", levels=5, log=True)
    assert not ax.get_images()
    assert len(ax.collections) >= 1
    assert ax.get_xlim() == (-3, 3)


def test_plot_density_colorbar_adds_an_axes(ax):
    plotting.plot_density(ax, StandardGaussian(), (-3, 3), (-3, 3), n_grid=10, colorbar=True)
    assert len(ax.figure.axes) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"xlim": (1, -1)}, "xlim"),
        ({"ylim": (0,)}, "ylim"),
        ({"kind": "surface"}, "kind"),
        ({"n_grid": 0}, "n_grid"),
    ],
)
def test_plot_density_rejects_bad_input(ax, kwargs, match):
    arguments = {"xlim": (-1, 1), "ylim": (-1, 1), **kwargs}
    with pytest.raises(ValueError, match=match):
        plotting.plot_density(ax, StandardGaussian(), **arguments)


def test_plot_density_rejects_a_non_density(ax):
    with pytest.raises(ValueError, match="density_or_log_prob"):
        plotting.plot_density(ax, 3.0, (-1, 1), (-1, 1))


def test_plot_score_field_normalised_arrows_coloured_by_magnitude(ax):
    plotting.plot_score_field(ax, StandardGaussian(), (-2, 2), (-2, 2), n_grid=5, colorbar=True)
    (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert quiver.N == 25
    assert np.allclose(np.hypot(quiver.U, quiver.V)[np.hypot(quiver.X, quiver.Y) > 0], 1.0)
    # the colour array holds |s(x)| = |x| for N(0, I)
    assert np.allclose(quiver.get_array(), np.hypot(quiver.X, quiver.Y))
    assert len(ax.figure.axes) == 2


def test_plot_score_field_raw_arrows(ax):
    plotting.plot_score_field(ax, lambda x: -2 * x, (-2, 2), (-2, 2), n_grid=3, normalize=False)
    (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert np.allclose(quiver.U, -2 * quiver.X) and np.allclose(quiver.V, -2 * quiver.Y)


def test_plot_score_field_rejects_a_wrong_shape(ax):
    with pytest.raises(ValueError, match="score_fn"):
        plotting.plot_score_field(ax, lambda x: x[:, :1], (-1, 1), (-1, 1), n_grid=3)


def test_plot_samples_scatters_the_points_over_contours(ax):
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    plotting.plot_samples(ax, x, density=StandardGaussian(), xlim=(-4, 4), ylim=(-4, 4),
                          max_points=200)
    (scatter,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert scatter.get_offsets().shape == (200, 2)
    assert np.allclose(scatter.get_offsets(), x[:200].numpy())
    assert len(ax.collections) > 1  # the contour lines


def test_plot_samples_rejects_bad_input(ax):
    with pytest.raises(ValueError, match="x must have"):
        plotting.plot_samples(ax, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="xlim and ylim"):
        plotting.plot_samples(ax, torch.zeros(10, 2), density=StandardGaussian())


def test_plot_trajectories_draws_one_line_per_particle(ax):
    trajectory = torch.cumsum(torch.randn(20, 7, 2, generator=torch.Generator().manual_seed(1)), 0)
    plotting.plot_trajectories(ax, trajectory, n_show=4, markers=False)
    assert len(ax.lines) == 4
    assert np.allclose(ax.lines[2].get_xydata(), trajectory[:, 2].numpy())
    ax.clear()
    plotting.plot_trajectories(ax, trajectory, n_show=100)
    assert len(ax.lines) == 7 * 3  # every particle, with a start and an end marker


def test_plot_trajectories_rejects_a_flat_array(ax):
    with pytest.raises(ValueError, match="trajectory"):
        plotting.plot_trajectories(ax, torch.zeros(5, 2))


def test_animate_particles_subsamples_frames_and_plays_as_html():
    trajectory = torch.randn(100, 50, 2, generator=torch.Generator().manual_seed(2))
    anim = plotting.animate_particles(trajectory, density=StandardGaussian(), max_frames=6,
                                      xlim=(-3, 3), ylim=(-3, 3), figsize=(2, 2), dpi=40,
                                      n_grid=20)
    assert isinstance(anim, FuncAnimation)
    html = plotting.animation_html(anim)
    text = html.data
    assert text.count("data:image/jpeg;base64") == 6
    assert len(text) < 200_000


def test_animate_particles_per_frame_backgrounds_and_titles():
    trajectory = torch.zeros(3, 4, 2)
    densities = [StandardGaussian(), StandardGaussian(), StandardGaussian()]
    anim = plotting.animate_particles(trajectory, density=densities, frame_titles=["a", "b", "c"],
                                      figsize=(2, 2), dpi=30, n_grid=10)
    text = plotting.animation_html(anim, frame_format="png").data
    assert text.count("data:image/png;base64") == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"trajectory": torch.zeros(3, 4)}, "trajectory"),
        ({"frame_titles": ["only one"]}, "frame_titles"),
        ({"density": [StandardGaussian()]}, "density"),
        ({"max_frames": 0}, "max_frames"),
    ],
)
def test_animate_particles_rejects_bad_input(kwargs, match):
    arguments = {"trajectory": torch.zeros(3, 4, 2), **kwargs}
    with pytest.raises(ValueError, match=match):
        plotting.animate_particles(**arguments)


def test_plot_score_error_draws_the_log10_distance_between_two_scores(ax):
    density = StandardGaussian()
    image = plotting.plot_score_error(ax, lambda x: density.score(x) + torch.tensor([3.0, 4.0]),
                                      density, (-2, 2), (-2, 2), n_grid=10)
    values = image.get_array()
    assert values.shape == (10, 10)
    assert np.allclose(values, np.log10(5.0), atol=1e-5)  # |(3, 4)| = 5 everywhere
    with pytest.raises(ValueError, match="vmin"):
        plotting.plot_score_error(ax, density, density, (-2, 2), (-2, 2), vmin=1, vmax=0)
    with pytest.raises(ValueError, match="reference"):
        plotting.plot_score_error(ax, density, lambda x: x[:, :1], (-2, 2), (-2, 2))


def test_animate_images_plays_one_frame_per_recorded_state():
    path = torch.rand(5, 6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    anim = plotting.animate_images(path, nrow=3, frame_titles=list("abcde"), figsize=(2, 1.5),
                                   dpi=30)
    assert isinstance(anim, FuncAnimation)
    assert plotting.animation_html(anim, frame_format="png").data.count(
        "data:image/png;base64") == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"path": torch.zeros(3, 2, 8, 8)}, "path"),
        ({"frame_titles": ["only one"]}, "frame_titles"),
        ({"frame_titles": "abc"}, "frame_titles"),
        ({"nrow": 0}, "nrow"),
    ],
)
def test_animate_images_rejects_bad_input(kwargs, match):
    arguments = {"path": torch.zeros(3, 2, 1, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=match):
        plotting.animate_images(**arguments)


def test_animation_html_rejects_a_non_animation():
    with pytest.raises(ValueError, match="anim"):
        plotting.animation_html("not an animation")


def test_image_grid_tiles_the_images(ax):
    images = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    out = plotting.image_grid(images, nrow=4, ax=ax, padding=1)
    assert out is ax
    (image,) = ax.get_images()
    canvas = image.get_array()
    assert canvas.shape == (3 * 9 + 1, 4 * 9 + 1)  # 3 rows, 4 columns, 1 pixel of padding
    assert np.allclose(canvas[1:9, 1:9], images[0, 0].numpy())
    assert np.allclose(canvas[10:18, 1:9], images[4, 0].numpy())  # second row starts at image 4


def test_image_grid_labels_each_column_above_its_centre(ax):
    plotting.image_grid(torch.zeros(6, 1, 8, 8), nrow=3, ax=ax, column_labels=["a", "b", "c"])
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    assert list(texts) == ["a", "b", "c"]
    assert [x for x, _ in texts.values()] == [4.5, 13.5, 22.5]  # 1 + 9 k + 3.5
    assert all(y < 0 for _, y in texts.values())  # above the first row
    with pytest.raises(ValueError, match=r"column_labels must hold one label per column \(3\)"):
        plotting.image_grid(torch.zeros(6, 1, 8, 8), nrow=3, ax=ax, column_labels=["a", "b"])


def test_image_grid_colour_images_and_own_figure():
    ax = plotting.image_grid(np.full((2, 3, 4, 4), 0.5), nrow=2, padding=0)
    assert ax.get_images()[0].get_array().shape == (4, 8, 3)
    plt.close(ax.figure)


@pytest.mark.parametrize(
    "images, kwargs, match",
    [
        (torch.zeros(4, 8, 8), {}, "images must have 4 dimensions"),
        (torch.zeros(4, 2, 8, 8), {}, "channels"),
        (torch.zeros(4, 1, 8, 8), {"nrow": 0}, "nrow"),
        (torch.zeros(4, 1, 8, 8), {"padding": -1}, "padding"),
    ],
)
def test_image_grid_rejects_bad_input(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plotting.image_grid(images, **kwargs)


def test_no_function_calls_show(monkeypatch, ax):
    def fail():
        raise AssertionError("plotting must never call plt.show()")

    monkeypatch.setattr(plt, "show", fail)
    density, trajectory = StandardGaussian(), torch.zeros(4, 3, 2)
    plotting.plot_density(ax, density, (-1, 1), (-1, 1), n_grid=5)
    plotting.plot_score_field(ax, density, (-1, 1), (-1, 1), n_grid=3)
    plotting.plot_samples(ax, torch.zeros(3, 2), density=density, xlim=(-1, 1), ylim=(-1, 1))
    plotting.plot_trajectories(ax, trajectory)
    plotting.animation_html(plotting.animate_particles(trajectory, figsize=(1, 1), dpi=20))
    plotting.image_grid(torch.zeros(2, 1, 4, 4), nrow=2, ax=ax)


def test_plot_arguments_that_used_to_slip_through_are_refused(ax):
    from scorelab.densities import ncsn_toy_mixture

    with pytest.raises(ValueError, match="levels must be a positive integer"):
        plotting.plot_density(ax, ncsn_toy_mixture(), (-1, 1), (-1, 1), kind="contour", levels=-3)
    with pytest.raises(ValueError, match="nrow must be a positive integer"):
        plotting.image_samples(None, images=torch.zeros(4, 1, 8, 8), nrow=0)
    with pytest.raises(ValueError, match="must have a .log_prob method"):
        plotting.animate_particles(torch.zeros(3, 5, 2), density="gm")
    plt.close("all")


def test_nan_inputs_are_refused_instead_of_drawing_a_blank_plot(ax):
    with pytest.raises(ValueError, match="x holds NaN values"):
        plotting.plot_samples(ax, torch.full((5, 2), float("nan")))
    with pytest.raises(ValueError, match="images holds NaN values"):
        plotting.image_grid(torch.full((2, 1, 8, 8), float("nan")), ax=ax)
    with pytest.raises(ValueError, match="trajectory holds NaN values"):
        plotting.plot_trajectories(ax, torch.full((3, 5, 2), float("nan")))


def test_coordinate_ticks_label_the_outer_panels_of_a_grid_only():
    fig, axes = plt.subplots(2, 3)
    axes[1, 2].set_visible(False)  # as small_multiples leaves an incomplete last row
    panels = plotting.coordinate_ticks(fig.axes, [-2, 0, 2], [-1, 1])
    assert len(panels) == 5
    for ax in panels:
        assert list(ax.get_xticks()) == [-2, 0, 2] and list(ax.get_yticks()) == [-1, 1]

    def labelled(ax, side):
        return ax.xaxis.get_tick_params()[side] if side == "labelbottom" else \
            ax.yaxis.get_tick_params()[side]

    # x labels on the bottom row, and on the panel above the hidden one
    assert [labelled(ax, "labelbottom") for ax in axes[0]] == [False, False, True]
    assert [labelled(ax, "labelbottom") for ax in axes[1, :2]] == [True, True]
    # y labels on the left column only
    assert [labelled(ax, "labelleft") for ax in axes[:, 0]] == [True, True]
    assert not any(labelled(ax, "labelleft") for ax in (axes[0, 1], axes[0, 2], axes[1, 1]))
    plt.close(fig)


def test_coordinate_ticks_refuse_what_is_not_an_axes():
    with pytest.raises(ValueError, match="ax must be a matplotlib Axes"):
        plotting.coordinate_ticks([object()], [0, 1])


def test_architecture_diagram_draws_every_block_and_ends_each_arrow_on_its_boxes(ax):
    from matplotlib.text import Annotation

    from scorelab.ncsn import CondRefineNetDilated

    net = CondRefineNetDilated(channels=1, image_size=8, ngf=4, num_classes=3)
    assert plotting.architecture_diagram(net, ax) is ax
    boxes = {t.get_text().split(":")[0]: t for t in ax.texts if not isinstance(t, Annotation)}
    assert list(boxes) == [name for name, _ in net.named_children()]
    assert "res2: 2 x ConditionalResidualBlock\n8 x 4 x 4" in boxes["res2"].get_text()
    arrows = [t for t in ax.texts if isinstance(t, Annotation)]
    assert len(arrows) == len(boxes) - 1 + 3  # the forward chain and three skip connections
    for arrow in arrows:
        patches = arrow.arrow_patch.patchA, arrow.arrow_patch.patchB
        assert all(patch is not None for patch in patches)  # clipped to both boxes
        assert arrow.arrow_patch.shrinkA == 0 and arrow.arrow_patch.shrinkB == 0
    skips = [a for a in arrows if a.arrow_patch.get_linestyle() == "--"]
    assert len(skips) == 3


def test_architecture_diagram_refuses_another_network():
    with pytest.raises(ValueError, match="net must be a CondRefineNetDilated"):
        plotting.architecture_diagram(torch.nn.Linear(2, 2))
