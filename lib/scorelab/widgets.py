"""Interactive explorers for the chapters: sliders over a figure, and their static companions.

Each explorer pairs a plain drawing function, ``draw_*(ax, ...)``, which draws one setting on a
matplotlib ``ax`` and returns it, with a function ``*_explorer(...)`` that returns an ipywidgets
widget whose sliders redraw the figure. The drawing functions carry all the logic, so tests and
the static book call them directly: :func:`small_multiples` lays several settings side by side,
the figure a reader sees where no kernel runs. Only ``ipywidgets.interactive``, ``Image`` and
slider classes that exist in ipywidgets 7.6 and 8 are used (Colab ships ipywidgets 7).

The explorers:

- :func:`mixture_explorer`: weight and separation of a two-component mixture (chapter 1);
- :func:`langevin_explorer`: step size and number of Langevin steps (chapter 2);
- :func:`noise_level_explorer`: noise level of the perturbed 0.8/0.2 mixture (chapter 3);
- :func:`dsm_explorer`: the noise level of denoising score matching (chapter 4).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scorelab import plotting
from scorelab._tensors import randn
from scorelab._validation import check_positive, check_positive_int
from scorelab.seeding import check_seed
from scorelab.densities import GaussianMixture, ncsn_toy_mixture
from scorelab.langevin import langevin_dynamics
from scorelab.metrics import fisher_divergence, mode_weights

__all__ = [
    "two_mode_mixture",
    "draw_mixture",
    "draw_langevin",
    "draw_noise_level",
    "draw_dsm",
    "small_multiples",
    "mixture_explorer",
    "langevin_explorer",
    "noise_level_explorer",
    "dsm_explorer",
]

Limits = tuple[float, float]


def _check_weight(weight) -> float:
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"weight must be a number in (0, 1), got {weight!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"weight must be a number in (0, 1), got {weight!r}")
    return value


def two_mode_mixture(weight: float = 0.7, separation: float = 4.0,
                     variance: float = 0.5) -> GaussianMixture:
    """Two isotropic Gaussians on the diagonal, ``separation`` apart, centred at the origin.

    Parameters
    ----------
    weight : float in (0, 1)
        Weight of the component in the upper right; the other gets ``1 - weight``.
    separation : float > 0
        Distance between the two means.
    variance : float > 0
        Variance of each coordinate of each component.

    Returns
    -------
    GaussianMixture
        Means ``±(separation / (2 sqrt 2)) (1, 1)``, shape (2, 2).
    """
    weight = _check_weight(weight)
    offset = check_positive("separation", separation) / (2 * 2**0.5)
    variance = check_positive("variance", variance)
    return GaussianMixture(torch.tensor([weight, 1 - weight]),
                           torch.tensor([[offset, offset], [-offset, -offset]]),
                           torch.tensor([variance, variance]))


def draw_mixture(ax: Axes, weight: float = 0.7, separation: float = 4.0, *,
                 limits: Limits = (-5.0, 5.0), n_grid: int = 17) -> Axes:
    """Density and unit score arrows of :func:`two_mode_mixture` (chapter 1's explorer).

    The score between the modes turns where the responsibilities cross, which moves towards the
    lighter mode as ``weight`` grows: the weights show in the score only between the modes.
    """
    mixture = two_mode_mixture(weight, separation)
    plotting.plot_density(ax, mixture, limits, limits, n_grid=120)
    plotting.plot_score_field(ax, mixture, limits, limits, n_grid=n_grid, color="white",
                              width=0.004)
    ax.set_title(f"weight {weight:.2f}\nseparation {separation:.1f}", fontsize=9)
    return ax


def draw_langevin(ax: Axes, step_size: float = 0.05, n_steps: int = 200, *,
                  n_particles: int = 500, seed: int = 0,
                  limits: Limits = (-4.5, 4.5)) -> Axes:
    """Particles after ``n_steps`` Langevin steps of size ``step_size`` (chapter 2's explorer).

    The target is chapter 2's 0.7/0.3 mixture; particles start near (3.5, -3.5). The title gives
    the share of particles nearest to the heavier mode's mean (0.68 once the chain has mixed: the
    components overlap, so the nearest-mean share of exact samples is
    0.7 Phi(d / 2s) + 0.3 Phi(-d / 2s) = 0.678, with d = 2.68 between the means and s = 0.84 the
    components' standard deviation), and the update is chapter 2's Langevin step,
    ``x <- x + (alpha/2) s(x) + sqrt(alpha) z``.
    """
    step_size = check_positive("step_size", step_size)
    n_steps = check_positive_int("n_steps", n_steps)
    n_particles = check_positive_int("n_particles", n_particles)
    mixture = GaussianMixture(torch.tensor([0.7, 0.3]), torch.tensor([[-1.2, -0.6], [1.2, 0.6]]),
                              torch.tensor([0.7, 0.7]))
    generator = torch.Generator().manual_seed(check_seed(seed))
    x0 = torch.tensor([3.5, -3.5]) + 0.3 * randn((n_particles, 2), generator=generator)
    x = langevin_dynamics(mixture.score, x0, step_size, n_steps, generator=generator,
                          progress=False)  # (n_particles, 2)
    share = float(mode_weights(x, mixture.means)[0])
    plotting.plot_samples(ax, x, density=mixture, xlim=limits, ylim=limits, s=4, alpha=0.6)
    ax.set_title(f"step {step_size:g}, {n_steps} steps\n{share:.2f} near the heavy mode (0.68)",
                 fontsize=9)
    return ax


def draw_noise_level(ax: Axes, sigma: float = 5.0, *, limits: Limits = (-12.0, 12.0),
                     n_grid: int = 17) -> Axes:
    """The 0.8/0.2 mixture perturbed by noise of level ``sigma`` and its score (chapter 3).

    The title gives the heavy mode's responsibility at the light mode's centre (-5, -5): about 0
    for small ``sigma`` (there the score sees only the light mode), rising to the weight 0.8 as
    ``sigma`` grows and the modes merge, which is why the perturbed score "knows" the weights,
    unlike the clean score (Song and Ermon 2019, Section 3.2.2; the remedy, Sections 4
    and 4.3).
    """
    sigma = check_positive("sigma", sigma)
    level = ncsn_toy_mixture().perturbed(sigma)
    plotting.plot_density(ax, level, limits, limits, n_grid=120)
    plotting.plot_score_field(ax, level, limits, limits, n_grid=n_grid, color="white",
                              width=0.004)
    probe = torch.tensor([[-5.0, -5.0]])  # the light mode's centre
    heavy = float(level.responsibilities(probe)[0, 0])
    ax.set_title(f"sigma {sigma:.2f}\nheavy mode's responsibility at (-5, -5): {heavy:.2f}",
                 fontsize=9)
    return ax


def draw_dsm(ax: Axes, sigma: float = 0.5, *, n_samples: int = 2000, seed: int = 0,
             limits: Limits = (-5.0, 5.0), error_max: float = 3.0) -> Axes:
    """What denoising score matching at noise level ``sigma`` learns, and what that costs.

    DSM's optimum is the score of the perturbed density ``p_sigma`` (Vincent 2011), not that of
    ``p``. The heatmap is the error ``|s_sigma(x) - s(x)|`` of that optimum on chapter 4's
    0.7/0.3 mixture on a colour scale fixed from 0 to ``error_max`` (so panels compare); dots
    are noisy training points ``x + sigma z`` (cyan); the title gives the relative
    Fisher divergence of ``s_sigma`` to the true score under ``p`` (the bias a perfect DSM
    model keeps).
    """
    sigma = check_positive("sigma", sigma)
    n_samples = check_positive_int("n_samples", n_samples)
    error_max = check_positive("error_max", error_max)
    mixture = GaussianMixture(torch.tensor([0.7, 0.3]), torch.tensor([[-2.0, -2.0], [2.0, 2.0]]),
                              torch.tensor([0.5, 0.5]))
    level = mixture.perturbed(sigma)
    generator = torch.Generator().manual_seed(check_seed(seed))
    clean = mixture.sample(n_samples, generator=generator)  # (n_samples, 2)
    noisy = clean + sigma * randn(clean.shape, generator=generator)
    bias = fisher_divergence(level.score, mixture.score, clean, relative=True)
    xs, ys, points = plotting.grid_points(limits, limits, 100)
    with torch.no_grad():
        error = (level.score(points) - mixture.score(points)).norm(dim=1)  # (100*100,)
    ax.imshow(error.reshape(len(ys), len(xs)).numpy(), origin="lower", extent=(*limits, *limits),
              cmap="magma", aspect="equal", vmin=0.0, vmax=error_max)
    plotting.plot_samples(ax, noisy, xlim=limits, ylim=limits, s=2, alpha=0.4, color="tab:cyan")
    ax.set_title(f"sigma {sigma:.2f}\nrelative Fisher divergence {bias:.2g}", fontsize=9)
    return ax


def small_multiples(draw: Callable[..., Axes], settings: Sequence[Mapping], *, ncols: int = 4,
                    panel_size: float = 3.2) -> Figure:
    """One panel per setting: the static companion of an explorer, for the HTML book.

    Parameters
    ----------
    draw : one of the ``draw_*`` functions, called as ``draw(ax, **setting)``
    settings : sequence of dicts of keyword arguments, one per panel
    ncols : int
        Panels per row.
    panel_size : float
        Width and height of each panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not callable(draw):
        raise ValueError(f"draw must be a drawing function, got {type(draw).__name__}")
    if len(settings) == 0 or not all(isinstance(s, Mapping) for s in settings):
        raise ValueError("settings must be a non-empty sequence of dicts of keyword arguments")
    ncols = min(check_positive_int("ncols", ncols), len(settings))
    nrows = -(-len(settings) // ncols)
    size = check_positive("panel_size", panel_size)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax, setting in zip(axes.flat, settings):
        draw(ax, **setting)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _explorer(draw: Callable[..., Axes], sliders: dict, figsize: tuple[float, float]):
    """Sliders that redraw ``draw`` on a fresh figure, shown as a PNG in an ``Image`` widget.

    The picture travels as the image widget's state, not as captured output: the browser
    routes captured output into a widget only once it has built that widget, so on a slow
    first load the first figure would land below the explorer. Errors still show in the
    output area of the ``interactive``, its last child.
    """
    import ipywidgets

    # drawn at 1.5x, shown at the size of matplotlib's inline figures (100 pixels an inch)
    image = ipywidgets.Image(format="png", width=f"{round(100 * figsize[0])}")

    def update(**values):
        fig, ax = plt.subplots(figsize=figsize)
        try:
            draw(ax, **values)
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=150)
        finally:
            plt.close(fig)
        image.value = buffer.getvalue()

    explorer = ipywidgets.interactive(update, **sliders)
    explorer.children = (*explorer.children[:-1], image, explorer.out)
    return explorer


def _slider(kind: str, value, description: str, argument: str | None = None, **bounds):
    """A slider starting at ``value``, which must lie in its range: ipywidgets would move a
    start value outside it to the nearest end without a word."""
    import ipywidgets

    low, high = bounds["min"], bounds["max"]
    if kind == "log":
        low, high = bounds["base"] ** low, bounds["base"] ** high
    if not low <= value <= high:
        raise ValueError(f"{argument or description} must start inside the slider's range "
                         f"[{low:.4g}, {high:.4g}], got {value!r}")
    style = {"description_width": "initial"}
    cls = {"float": ipywidgets.FloatSlider, "log": ipywidgets.FloatLogSlider,
           "int": ipywidgets.IntSlider}[kind]
    return cls(value=value, description=description, continuous_update=False, style=style,
               **bounds)


def mixture_explorer(weight: float = 0.7, separation: float = 4.0):
    """Sliders for the weight and separation of a two-mode mixture over :func:`draw_mixture`.

    Returns
    -------
    ipywidgets.interactive
        A widget (a VBox of the sliders and an output area); display it as a cell's last line.
    """
    two_mode_mixture(weight, separation)  # checks the start values
    return _explorer(draw_mixture, {
        "weight": _slider("float", weight, "weight", min=0.05, max=0.95, step=0.05),
        "separation": _slider("float", separation, "separation", min=0.5, max=8.0, step=0.5),
    }, figsize=(4.5, 4.5))


def langevin_explorer(step_size: float = 0.05, n_steps: int = 200):
    """Sliders for the Langevin step size (log scale) and steps over :func:`draw_langevin`.

    Returns
    -------
    ipywidgets.interactive
    """
    check_positive("step_size", step_size)
    check_positive_int("n_steps", n_steps)
    return _explorer(draw_langevin, {
        "step_size": _slider("log", step_size, "step size", "step_size", base=10, min=-3, max=0.3, step=0.1),
        "n_steps": _slider("int", n_steps, "steps", "n_steps", min=1, max=1000, step=10),
    }, figsize=(4.5, 4.5))


def noise_level_explorer(sigma: float = 5.0):
    """A log-scale slider for the noise level sigma over :func:`draw_noise_level`.

    Returns
    -------
    ipywidgets.interactive
    """
    check_positive("sigma", sigma)
    return _explorer(draw_noise_level, {
        "sigma": _slider("log", sigma, "sigma", base=10, min=-1, max=1.5, step=0.05),
    }, figsize=(4.5, 4.5))


def dsm_explorer(sigma: float = 0.5):
    """A log-scale slider for the DSM noise level over :func:`draw_dsm` (chapter 4).

    Returns
    -------
    ipywidgets.interactive
    """
    check_positive("sigma", sigma)
    return _explorer(draw_dsm, {
        "sigma": _slider("log", sigma, "sigma", base=10, min=-2, max=0.5, step=0.05),
    }, figsize=(4.5, 4.5))
