"""Benchmark section ``sampling``: annealed Langevin on the NCSN toy mixture, its accuracy and speed.

Two groups of figures, on ``ncsn_toy_mixture()`` (0.8 N((5,5), I) + 0.2 N((-5,-5), I)) with
10,000 particles started uniformly on [-8, 8]^2 and 10 geometric levels from sigma 20 to 1:

- mixture-weight recovery: the share of particles closer to (5, 5) than to (-5, -5) after
  annealed Langevin (base step 0.1) at 100, 300 and (without ``--quick``) 1,000 steps a
  level, and after plain Langevin (step 0.1) for the same total number of steps; seeds 0,
  1, 2 (also with ``--quick``), their mean against the targets
  |w - 0.8| < 0.025 (100 steps) and < 0.01 (300 steps); and, for comparison, 100 steps a
  level at twice the base step (0.2; the base step 0.1 is the authors' toy setting,
  ``lr = 0.1`` in their toy runner's ``x + (lr / 2) s + sqrt(lr) z``, this course's convention);
- speed on 10 levels x 100 steps: the library's ``annealed_langevin_dynamics`` with
  ``mixture.perturbed_score`` against (a) a reference loop that takes the score by autograd
  of a log-density summed one component at a time (the style of Song & Ermon's toy runner)
  and (b) a bare loop with the same closed-form isotropic score written inline; medians
  of 5 interleaved repeats, at 10,000 and 1,280 particles.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from scorelab.bench import register, row
from scorelab.densities import GaussianMixture, ncsn_toy_mixture
from scorelab.langevin import annealed_langevin_dynamics, langevin_dynamics
from scorelab.noise import geometric_sigmas

SECTION = "sampling"
N_PARTICLES = 10_000
STEP_SIZE = 0.1
SIGMAS = (20.0, 1.0, 10)  # sigma_max, sigma_min, levels
UPPER_MODE = (5.0, 5.0)
TARGETS = {100: 0.025, 300: 0.01}


def uniform_start(n: int, generator: torch.Generator) -> torch.Tensor:
    """n particles uniform on [-8, 8]^2, shape (n, 2)."""
    return 16.0 * torch.rand(n, 2, generator=generator) - 8.0


def upper_mode_weight(x: torch.Tensor) -> float:
    """Share of particles closer to (5, 5) than to (-5, -5) (the half-plane x_0 + x_1 > 0)."""
    return (x.sum(dim=1) > 0).double().mean().item()


def recovered_weights(
    n_steps_each: int, seed: int, step_size: float = STEP_SIZE
) -> tuple[float, float]:
    """Weights of the (5, 5) mode after annealed and plain Langevin with as many steps."""
    mixture = ncsn_toy_mixture()
    generator = torch.Generator().manual_seed(seed)
    x0 = uniform_start(N_PARTICLES, generator)
    sigmas = geometric_sigmas(*SIGMAS)
    annealed = annealed_langevin_dynamics(
        mixture.perturbed_score, x0, sigmas, step_size, n_steps_each,
        generator=generator, progress=False,
    )
    plain = langevin_dynamics(mixture.score, x0, step_size, len(sigmas) * n_steps_each,
                              generator=generator, progress=False)
    return upper_mode_weight(annealed), upper_mode_weight(plain)


@register(SECTION)
def weight_recovery(*, quick: bool) -> list[dict]:
    """Rows: the recovered weight of the (5, 5) mode, annealed and plain, per steps a level."""
    # The targets are on the mean of three seeds (one seed's Monte-Carlo spread, about 0.005,
    # is a fifth of the tolerance), so --quick keeps the seeds and drops the 1,000-step run.
    seeds = [0, 1, 2]
    rows = []
    for n_steps_each in [100, 300] if quick else [100, 300, 1000]:
        results = [recovered_weights(n_steps_each, seed) for seed in seeds]
        annealed = [a for a, _ in results]
        plain = [p for _, p in results]
        mean = statistics.fmean(annealed)
        tolerance = TARGETS.get(n_steps_each)
        target = f"|w-0.8| < {tolerance}" if tolerance else ""
        ok = abs(mean - 0.8) < tolerance if tolerance else None
        per_seed = "seeds " + ", ".join(f"{w:.4f}" for w in annealed)
        rows.append(row(SECTION, f"annealed weight of (5,5), {n_steps_each} steps/level", mean,
                        target=target, ok=ok, note=f"mean of {len(seeds)}; {per_seed}"))
        rows.append(row(SECTION, f"plain Langevin weight, {10 * n_steps_each} steps",
                        statistics.fmean(plain), target="about 0.5 (fails)",
                        note="seeds " + ", ".join(f"{w:.4f}" for w in plain)))
    # The authors' toy runner writes x + (lr / 2) s + sqrt(lr) z with lr = 0.1, the step
    # STEP_SIZE above; this row doubles it.
    annealed = [recovered_weights(100, seed, step_size=2 * STEP_SIZE)[0] for seed in seeds]
    rows.append(row(SECTION, "annealed weight, 100 steps/level, step 0.2",
                    statistics.fmean(annealed),
                    target="(twice the authors' toy step)",
                    note=f"mean of {len(seeds)}; seeds " + ", ".join(f"{w:.4f}" for w in annealed)))
    return rows


def _toy_runner_log_prob(x: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor,
                         std: float) -> torch.Tensor:
    """Log-density of an isotropic mixture, one component at a time (Song & Ermon's toy runner)."""
    log_components = []
    for mean, log_weight in zip(means, log_weights):
        log_components.append(-((x - mean) ** 2).sum(dim=-1) / (2 * std**2)
                              - math.log(2 * math.pi * std**2) + log_weight)  # 2-D normaliser
    return torch.logsumexp(torch.stack(log_components, dim=0), dim=0)


def reference_autograd_sampler(
    mixture: GaussianMixture, x0: torch.Tensor, sigmas: list[float], step_size: float,
    n_steps_each: int, generator: torch.Generator,
) -> torch.Tensor:
    """Annealed Langevin, the score by autograd of a component-by-component log-density."""
    means, log_weights = mixture.means, mixture.weights.log()
    variance = mixture.covariances[0, 0, 0].item()
    x = x0.clone()
    for sigma in sigmas:
        std = math.sqrt(variance + sigma**2)
        alpha = step_size * (sigma / sigmas[-1]) ** 2
        for _ in range(n_steps_each):
            x = x.detach().requires_grad_(True)
            log_prob = _toy_runner_log_prob(x, means, log_weights, std)
            (score,) = torch.autograd.grad(log_prob.sum(), x)
            noise = torch.randn(x.shape, generator=generator)
            x = x + 0.5 * alpha * score + math.sqrt(alpha) * noise
    return x.detach()


@torch.no_grad()
def bare_closed_form_sampler(
    mixture: GaussianMixture, x0: torch.Tensor, sigmas: list[float], step_size: float,
    n_steps_each: int, generator: torch.Generator,
) -> torch.Tensor:
    """Annealed Langevin inline, with the library's isotropic closed-form score and no checks."""
    means, log_weights = mixture.means, mixture.weights.log()  # (K, D), (K,)
    center = mixture.weights @ means  # (D,)
    centred_means = means - center  # (K, D)
    variance = mixture.covariances[0, 0, 0].item()
    x = x0.clone()
    for sigma in sigmas:
        level_variance = variance + sigma**2
        constants = log_weights - 0.5 * centred_means.square().sum(1) / level_variance  # (K,)
        constants = constants[:, None]  # (K, 1)
        pulls = centred_means / level_variance  # (K, D)
        alpha = step_size * (sigma / sigmas[-1]) ** 2
        for _ in range(n_steps_each):
            centred = x - center  # (N, D)
            squares = centred.square().sum(1)  # (N,)
            logits = pulls @ centred.T - (0.5 / level_variance) * squares + constants  # (K, N)
            responsibilities = torch.softmax(logits, dim=0)  # (K, N)
            score = (responsibilities.T @ means - x) / level_variance  # (N, D)
            noise = torch.randn(x.shape, generator=generator)
            x = x + 0.5 * alpha * score + math.sqrt(alpha) * noise
    return x


def library_sampler(
    mixture: GaussianMixture, x0: torch.Tensor, sigmas: list[float], step_size: float,
    n_steps_each: int, generator: torch.Generator,
) -> torch.Tensor:
    """The library's sampler, as a chapter calls it (without the progress bar)."""
    return annealed_langevin_dynamics(
        mixture.perturbed_score, x0, sigmas, step_size, n_steps_each,
        generator=generator, progress=False,
    )


def median_times(
    n_particles: int, *, repeats: int = 5, n_steps_each: int = 100
) -> dict[str, float]:
    """Median wall time (s) of each sampler on the same work; repeats interleave the samplers
    so that a passing load on the machine hits all of them alike."""
    mixture = ncsn_toy_mixture()
    sigmas = geometric_sigmas(*SIGMAS).tolist()
    samplers = {"library": library_sampler, "reference": reference_autograd_sampler,
                "bare": bare_closed_form_sampler}
    x0 = uniform_start(n_particles, torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in samplers}
    for sampler in samplers.values():  # warm-up
        sampler(mixture, x0, sigmas, STEP_SIZE, 2, torch.Generator().manual_seed(1))
    for repeat in range(repeats):
        for name, sampler in samplers.items():
            generator = torch.Generator().manual_seed(repeat)
            start = time.perf_counter()
            sampler(mixture, x0, sigmas, STEP_SIZE, n_steps_each, generator)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@register(SECTION)
def speed(*, quick: bool) -> list[dict]:
    """Rows: median times of the three samplers and the ratios against the targets."""
    rows = []
    for n_particles, speedup_target in [(10_000, 1.1), (1_280, 2.0)]:
        times = median_times(n_particles, repeats=3 if quick else 5)
        for name in ("library", "reference", "bare"):
            rows.append(row(SECTION, f"{name} sampler, {n_particles} particles, 10x100 steps",
                            times[name], unit="s", note=f"median of {3 if quick else 5}"))
        speedup = times["reference"] / times["library"]
        rows.append(row(SECTION, f"speed-up over autograd reference, {n_particles}", speedup,
                        unit="x", target=f">= {speedup_target}", ok=speedup >= speedup_target))
        overhead = times["library"] / times["bare"]
        rows.append(row(SECTION, f"library / bare loop time, {n_particles}", overhead, unit="x",
                        target="<= 1.3", ok=overhead <= 1.3))
    return rows
