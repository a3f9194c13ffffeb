"""Benchmark section ``densities``: the accuracy of the perturbed banana's quadrature.

:class:`scorelab.densities.PerturbedBanana` computes the banana convolved with
N(0, sigma^2 I) as one 1-D Gaussian expectation by Gauss-Hermite quadrature. Here the same
expectation is computed by a trapezoid rule of ``REFERENCE_NODES`` points over 12 standard
deviations each side (converged to 1e-15 relative on these cases), at ``N_POINTS`` points
drawn from p_sigma, for sigma in ``SIGMAS``. Each row gives, for one banana (scale a,
curvature b), the largest relative error of the density over the points and the sigmas, and
the sigma where it occurs, with the default 64 nodes and with 256.
"""

from __future__ import annotations

import math

import torch

from scorelab.bench import register, row
from scorelab.densities import Banana

SECTION = "densities"
BANANAS = ((1.0, 0.5), (10.0, 0.03), (1.0, 1.0), (1.0, 2.0), (10.0, 0.1))  # (a, b)
SIGMAS = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
N_POINTS = 2_000
REFERENCE_NODES = 8_001
NODES = (64, 256)


def reference_prob(banana: Banana, sigma: float, x: torch.Tensor) -> torch.Tensor:
    """p_sigma(x) (N,) by the trapezoid rule, float64 (the formula of ``PerturbedBanana``)."""
    a2, s2, b = banana.scale**2, sigma**2, banana.curvature
    x = x.double()
    mean = a2 * x[:, :1] / (a2 + s2)  # (N, 1)
    std = math.sqrt(a2 * s2 / (a2 + s2))
    t = torch.linspace(-12.0, 12.0, REFERENCE_NODES, dtype=torch.float64)
    inner = []
    for start in range(0, x.shape[0], 256):
        u = mean[start:start + 256] + std * t  # (n, T)
        residual = x[start:start + 256, 1:] + b * (u.square() - a2)
        integrand = torch.exp(-0.5 * t.square() - 0.5 * residual.square() / (1 + s2))
        inner.append(torch.trapezoid(integrand, t, dim=1) / (2 * math.pi * math.sqrt(1 + s2)))
    x0_density = torch.exp(-0.5 * x[:, 0].square() / (a2 + s2)) / math.sqrt(2 * math.pi * (a2 + s2))
    return x0_density * torch.cat(inner)


def largest_error(banana: Banana, n_nodes: int, *, n_points: int = N_POINTS,
                  sigmas=SIGMAS) -> tuple[float, float]:
    """(largest relative error of the density, the sigma where it occurs) over ``sigmas``."""
    worst = (0.0, sigmas[0])
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(0)
        x = banana.sample(n_points, generator=generator).double()
        x = x + sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        expected = reference_prob(banana, sigma, x)
        got = banana.perturbed(sigma, n_nodes=n_nodes).prob(x)
        error = ((got - expected).abs() / expected).max().item()
        worst = max(worst, (error, sigma))
    return worst


@register(SECTION)
def quadrature_accuracy(*, quick: bool) -> list[dict]:
    n_points = 200 if quick else N_POINTS
    rows = []
    for a, b in BANANAS:
        banana = Banana(curvature=b, scale=a)
        for n_nodes in NODES:
            error, sigma = largest_error(banana, n_nodes, n_points=n_points)
            rows.append(row(SECTION, f"perturbed banana a={a:g}, b={b:g} (b a^2 = {b * a * a:g}), "
                            f"{n_nodes} nodes: largest relative error of the density",
                            error, note=f"at sigma = {sigma:g}; {n_points} points from p_sigma "
                            f"for each sigma in {', '.join(f'{s:g}' for s in SIGMAS)}"))
    return rows
