"""Benchmark section ``score_matching``: accuracy of DSM and SSM-VR, and cost per step vs dimension.

Run with ``python -m scorelab.bench score_matching [--quick]`` (or ``python -m
scorelab.bench.score_matching [--quick]``). Two groups of figures:

1. Accuracy. On the 2-D 0.8/0.2 mixture of Song & Ermon (modes at (5, 5) and (-5, -5), unit
   covariances) and on the banana (curvature 0.5, scale 1), a ``BasicNetwork`` (2-128-128-2,
   softplus) is trained with Adam (lr 1e-3, batch 128, at most 8,000 steps and at most 60 s of
   CPU time) by

   - DSM at ``SIGMA = 0.5`` on 10,000 clean samples: it learns the score of the perturbed
     density ``p_sigma = p * N(0, sigma^2 I)``;
   - SSM-VR (one Gaussian projection) on the same samples with fresh ``N(0, sigma^2 I)`` noise
     added to every batch, i.e. on samples of ``p_sigma``, so both target the same score.

   The figure is the relative Fisher divergence ``E||s - grad log p_sigma||^2 /
   E||grad log p_sigma||^2`` on 10,000 fresh samples of ``p_sigma`` (the perturbed mixture in
   closed form, the perturbed banana by quadrature), median over 3 seeds (``--quick``: 1).
   Target: below 0.1 for every pair.

2. Cost per training step vs dimension D in (2, 8, 32, 128, 512): exact score matching (D
   backward passes for the Hessian trace) against SSM-VR (one), median wall time of an Adam step
   on a batch of 32 with one thread. The network is ``BasicNetwork(D, (1024, 1024))``: its own
   cost grows with D only through the D x 1024 first and last layers, which at D = 512 together
   match the 1024 x 1024 middle layer (so the network at most doubles in size), and the table
   shows the cost of the objective, not of a network that grows with D. Targets: SSM's cost
   grows at most 2x from D = 2 to 512, exact SM's at least 50x. Chapter 5 computes and plots the same table with :func:`step_costs`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scorelab.bench import register, row

SECTION = "score_matching"
SIGMA = 0.5
N_DATA = 10_000
N_EVAL = 10_000
MAX_STEPS = 8_000
MAX_SECONDS = 60.0
BATCH_SIZE = 128
TARGET_FISHER = 0.1
DIMENSIONS = (2, 8, 32, 128, 512)
COST_HIDDEN_DIMS = (1024, 1024)
COST_BATCH_SIZE = 32
SSM_GROWTH_MAX = 2.0
EXACT_GROWTH_MIN = 50.0


def _targets():
    """The two 2-D targets: name -> (density, perturbed density with closed-form score)."""
    from scorelab.densities import Banana, ncsn_toy_mixture

    mixture, banana = ncsn_toy_mixture(), Banana()
    return {
        "mixture 0.8/0.2": (mixture, mixture.perturbed(SIGMA)),
        "banana": (banana, banana.perturbed(SIGMA)),
    }


def _perturbed_samples(density, n: int, generator: torch.Generator) -> torch.Tensor:
    """Samples of ``density * N(0, SIGMA^2 I)``: clean samples plus Gaussian noise, (n, 2)."""
    x = density.sample(n, generator=generator)
    return x + SIGMA * torch.randn(x.shape, generator=generator)


def train_and_measure(method: str, density, perturbed, *, seed: int) -> tuple[float, int, float]:
    """Train one score model; return (relative Fisher divergence, steps, seconds).

    ``method`` is ``"DSM"`` or ``"SSM-VR"`` (see the module docstring for the settings).
    """
    from scorelab.metrics import fisher_divergence
    from scorelab.nets import BasicNetwork
    from scorelab.training import DenoisingScoreMatching, SlicedScoreMatching

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BasicNetwork(input_dim=2, hidden_dims=(128, 128))
    data = density.sample(N_DATA, generator=generator)  # (N_DATA, 2)
    if method == "DSM":
        trainer, source = DenoisingScoreMatching(model, sigma=SIGMA), data
    else:
        trainer = SlicedScoreMatching(model, variance_reduction=True)

        def source(n):
            # Fresh perturbation of a data batch: SSM then learns the score of p_sigma.
            batch = data[torch.randint(N_DATA, (n,), generator=generator)]
            return batch + SIGMA * torch.randn(batch.shape, generator=generator)

    steps, start = 0, time.process_time()
    while steps < MAX_STEPS and time.process_time() - start < MAX_SECONDS:
        chunk = min(250, MAX_STEPS - steps)
        trainer.train(source, n_steps=chunk, batch_size=BATCH_SIZE, generator=generator,
                      progress=False)
        steps += chunk
    seconds = time.process_time() - start
    x_eval = _perturbed_samples(density, N_EVAL, generator)
    return fisher_divergence(model, perturbed.score, x_eval, relative=True), steps, seconds


def accuracy_table(*, seeds: int = 3) -> list[dict]:
    """Median relative Fisher divergence of DSM and SSM-VR on both targets, over ``seeds`` seeds."""
    rows = []
    for name, (density, perturbed) in _targets().items():
        for method in ("DSM", "SSM-VR"):
            runs = [train_and_measure(method, density, perturbed, seed=seed)
                    for seed in range(seeds)]
            rows.append({
                "target": name,
                "method": method,
                "fisher": statistics.median(run[0] for run in runs),
                "steps": statistics.median(run[1] for run in runs),
                "seconds": statistics.median(run[2] for run in runs),
            })
    return rows


def seconds_per_step(trainer, x: torch.Tensor, *, repeats: int, warmup: bool = True) -> float:
    """Median wall time (s) of ``trainer.step(x)``, after one warm-up step if ``warmup``."""
    if warmup:
        trainer.step(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.step(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_costs(
    dimensions=DIMENSIONS,
    *,
    hidden_dims=COST_HIDDEN_DIMS,
    batch_size: int = COST_BATCH_SIZE,
    repeats: int = 9,
    seed: int = 0,
) -> list[dict]:
    """Seconds per Adam step of exact SM and SSM-VR for each dimension.

    Returns
    -------
    list of dict
        One row per dimension: ``{"dim", "exact", "ssm"}`` (seconds). Exact SM above D = 32 is
        timed once without warm-up (one step takes seconds, so start-up costs do not show).
    """
    from scorelab.nets import BasicNetwork
    from scorelab.training import ExactScoreMatching, SlicedScoreMatching

    rows = []
    for dim in dimensions:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x = torch.randn(batch_size, dim, generator=generator)  # (B, D)
        ssm = SlicedScoreMatching(BasicNetwork(dim, hidden_dims), variance_reduction=True)
        exact = ExactScoreMatching(BasicNetwork(dim, hidden_dims))
        slow = dim > 32
        rows.append({
            "dim": dim,
            "exact": seconds_per_step(exact, x, repeats=1 if slow else repeats, warmup=not slow),
            "ssm": seconds_per_step(ssm, x, repeats=repeats),
        })
    return rows


@register(SECTION)
def accuracy(*, quick: bool) -> list[dict]:
    """Rows: median relative Fisher divergence of DSM and SSM-VR on both targets."""
    seeds = 1 if quick else 3
    return [
        row(SECTION, f"{result['target']}, {result['method']}: relative Fisher divergence",
            result["fisher"], target=f"< {TARGET_FISHER}", ok=result["fisher"] < TARGET_FISHER,
            note=f"sigma {SIGMA}, median of {seeds} seed(s), {result['steps']:.0f} steps, "
                 f"{result['seconds']:.1f} s CPU")
        for result in accuracy_table(seeds=seeds)
    ]


@register(SECTION)
def cost_per_step(*, quick: bool) -> list[dict]:
    """Rows: seconds per step of exact SM and SSM-VR by dimension, and their growth."""
    costs = step_costs(repeats=5 if quick else 9)
    note = f"BasicNetwork(D, {COST_HIDDEN_DIMS}), batch {COST_BATCH_SIZE}"
    rows = [row(SECTION, f"{method} step, D={cost['dim']}", cost[key], unit="s", note=note)
            for cost in costs for method, key in (("exact SM", "exact"), ("SSM-VR", "ssm"))]
    first, last = costs[0], costs[-1]
    ssm_growth, exact_growth = last["ssm"] / first["ssm"], last["exact"] / first["exact"]
    span = f"D={first['dim']} -> {last['dim']}"
    rows.append(row(SECTION, f"SSM-VR cost growth, {span}", ssm_growth, unit="x",
                    target=f"<= {SSM_GROWTH_MAX}", ok=ssm_growth <= SSM_GROWTH_MAX))
    rows.append(row(SECTION, f"exact SM cost growth, {span}", exact_growth, unit="x",
                    target=f">= {EXACT_GROWTH_MIN:.0f}", ok=exact_growth >= EXACT_GROWTH_MIN))
    return rows


def main(quick: bool = False) -> None:
    """Run this section alone and print its rows."""
    from scorelab.bench.__main__ import print_table

    torch.set_num_threads(1)
    print_table([*accuracy(quick=quick), *cost_per_step(quick=quick)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed instead of three")
    main(quick=parser.parse_args().quick)
