"""Make the book's images: the logo, the favicon and the welcome figure of the introduction.

Run from the repository root, once, after changing the look of the book:

    python book/_static/make_images.py

The images are committed (each under 100 KB), so building the book does not run this script.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorelab import plotting, seed_everything  # noqa: E402
from scorelab.densities import GaussianMixture, ncsn_toy_mixture  # noqa: E402
from scorelab.langevin import annealed_langevin_dynamics, geometric_sigmas, langevin_dynamics  # noqa: E402

HERE = Path(__file__).resolve().parent
LIMITS = (-8.0, 8.0)


def logo_mixture() -> GaussianMixture:
    """Three bumps, so the arrows of the logo swirl towards several modes."""
    return GaussianMixture(
        weights=torch.tensor([0.4, 0.35, 0.25]),
        means=torch.tensor([[-1.2, -0.8], [1.3, -0.5], [0.0, 1.4]]),
        covariances=torch.tensor([0.5, 0.4, 0.45]),
    )


def make_logo(path: Path, size_inches: float, dpi: int, n_grid: int) -> None:
    mixture = logo_mixture()
    fig, ax = plt.subplots(figsize=(size_inches, size_inches), dpi=dpi)
    plotting.plot_density(ax, mixture, (-3, 3), (-3, 3), n_grid=150, cmap="viridis")
    plotting.plot_score_field(ax, mixture, (-2.7, 2.7), (-2.7, 2.7), n_grid=n_grid, color="white",
                              width=0.012 if n_grid > 6 else 0.03)
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(path, dpi=dpi, transparent=True)
    plt.close(fig)


def make_welcome(path: Path) -> None:
    generator = seed_everything(0)
    mixture = ncsn_toy_mixture()
    x0 = torch.rand(2000, 2, generator=generator) * 16 - 8  # uniform on [-8, 8]^2
    plain = langevin_dynamics(mixture.score, x0, step_size=0.1, n_steps=1000,
                              generator=generator, progress=False)
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    annealed = annealed_langevin_dynamics(lambda x, sigma: mixture.perturbed(sigma).score(x), x0,
                                          sigmas, step_size=0.1, n_steps_each=100,
                                          generator=generator, progress=False)
    # one window for all three panels, wide enough for every particle: the annealed clouds
    # have variance 2 per coordinate and reach beyond the uniform start's [-8, 8]^2
    reach = max(plain.abs().max().item(), annealed.abs().max().item())
    bound = max(LIMITS[1], math.ceil(2 * reach) / 2 + 0.5)
    window = (-bound, bound)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), dpi=80)
    plotting.plot_density(axes[0], mixture, window, window, n_grid=150)
    plotting.plot_score_field(axes[0], mixture, window, window, n_grid=15, color="white")
    axes[0].set_title("0.8 / 0.2 mixture\ndensity and score", fontsize=10)
    for ax, samples, name in ((axes[1], plain, "Langevin"), (axes[2], annealed, "annealed Langevin")):
        share = (samples[:, 0] > 0).float().mean().item()
        # small, light markers: the 1,600 particles of the heavy mode stay a visible density
        plotting.plot_samples(ax, samples, density=mixture, xlim=window, ylim=window, s=2,
                              alpha=0.3)
        ax.set_title(f"{name}\n{share:.2f} of the samples in the upper mode", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    torch.set_num_threads(1)
    make_logo(HERE / "logo.png", size_inches=2.0, dpi=100, n_grid=9)
    make_logo(HERE / "favicon.png", size_inches=0.64, dpi=50, n_grid=4)
    make_welcome(HERE / "welcome.png")
    for name in ("logo.png", "favicon.png", "welcome.png"):
        print(f"{name}: {(HERE / name).stat().st_size / 1024:.0f} KB")
