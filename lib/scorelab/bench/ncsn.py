"""Benchmark section ``ncsn``: CondRefineNetDilated speed and the shipped model's sample quality.

Run with ``python -m scorelab.bench ncsn`` (or ``python -m scorelab.bench.ncsn``). Measures

- the median of 5 forward+backward passes of CondRefineNetDilated (ngf=32, 10 levels) on a
  batch of 128 8x8 digits;
- the quality figures of 500 samples (200 with ``--quick``) of ``load_pretrained("digits")``
  (its recorded sampling settings), each beside the same figure for real digits, with the
  targets of :mod:`scorelab.ncsn.quality`: confident share >= 80% of the real test digits'
  share, every class >= 3% of the samples, PCA Fréchet distance <= 0.3;
- the same figures at other step sizes (same samples' seed and count): NCSNv2's Technique 4
  for the shipped ladder and T = 10, half the shipped step and twice it. The shipped step was
  chosen by the confident share of its samples, not by the one-point rule; the PCA Fréchet
  distance prefers the rule's step (chapter 7 discusses both).
"""

from __future__ import annotations

import statistics
import time

import torch

from scorelab.bench import register, row
from scorelab.ncsn.quality import CONFIDENCE_RATIO, MAX_FRECHET, MIN_CLASS_SHARE

N_SAMPLES = 500


def forward_backward_seconds(*, ngf: int = 32, batch_size: int = 128, repeats: int = 5, seed: int = 0) -> float:
    """Median wall time (s) of one forward+backward pass on a batch of 8x8 digits."""
    from scorelab.data import load_digits
    from scorelab.ncsn import CondRefineNetDilated

    generator = torch.Generator().manual_seed(seed)
    net = CondRefineNetDilated(channels=1, image_size=8, ngf=ngf, num_classes=10)
    x = load_digits("train")[:batch_size]  # (B, 1, 8, 8)
    labels = torch.randint(10, (batch_size,), generator=generator)
    net(x, labels).square().sum().backward()  # warm-up
    times = []
    for _ in range(repeats):
        net.zero_grad(set_to_none=True)
        start = time.perf_counter()
        net(x, labels).square().sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_quality(*, n_samples: int = N_SAMPLES, seed: int = 0,
                   step_size: float | None = None) -> tuple[dict, float]:
    """Quality figures of ``n_samples`` samples of the shipped model, and the sampling time (s).

    ``step_size`` (this package's convention) replaces the model's recorded one if given."""
    from scorelab.ncsn import digits_quality, load_pretrained

    model = load_pretrained("digits")
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    samples = model.sample(n_samples, generator=generator, step_size=step_size)
    elapsed = time.perf_counter() - start
    return digits_quality(samples, generator=generator), elapsed


@register("ncsn")
def ncsn_rows(*, quick: bool) -> list[dict]:
    """The section's figures as benchmark rows, each quality figure beside the real digits'."""
    from scorelab.ncsn.quality import CONFIDENT, FRECHET, SMALLEST_CLASS

    rows = [row("ncsn", "CondRefineNetDilated ngf=32 fwd+bwd, batch 128 of 8x8",
                forward_backward_seconds() * 1000, unit="ms", note="median of 5")]
    n_samples = 200 if quick else N_SAMPLES
    figures, elapsed = sample_quality(n_samples=n_samples)
    confident, real_confident = figures[CONFIDENT]
    smallest, real_smallest = figures[SMALLEST_CLASS]
    frechet, real_frechet = figures[FRECHET]
    note = f"{n_samples} samples of the shipped model ({elapsed:.0f} s)"
    rows += [
        row("ncsn", f"{CONFIDENT}, samples", confident,
            target=f">= 0.8 x real = {CONFIDENCE_RATIO * real_confident:.3f}",
            ok=confident >= CONFIDENCE_RATIO * real_confident, note=note),
        row("ncsn", f"{CONFIDENT}, real test digits", real_confident),
        row("ncsn", f"{SMALLEST_CLASS}, samples", smallest, target=f">= {MIN_CLASS_SHARE}",
            ok=smallest >= MIN_CLASS_SHARE, note=note),
        row("ncsn", f"{SMALLEST_CLASS}, real test digits", real_smallest),
        row("ncsn", f"{FRECHET}, samples vs test", frechet, target=f"<= {MAX_FRECHET}",
            ok=frechet <= MAX_FRECHET, note=note),
        row("ncsn", f"{FRECHET}, real train vs test", real_frechet,
            note=f"{n_samples} training digits"),
    ]
    return rows + step_size_rows(n_samples, shipped=figures)


def compared_step_sizes() -> dict[str, float]:
    """The step sizes the sweep compares, by name: NCSNv2's rule and multiples of the shipped."""
    from scorelab.ncsn import load_pretrained
    from scorelab.noise import step_size_for_ladder

    model = load_pretrained("digits")
    sigmas = model.sigmas.double()
    gamma = float(sigmas[0] / sigmas[1])
    rule = step_size_for_ladder(gamma, model.n_steps_each, float(sigmas[-1]))
    return {"Technique 4": rule, "shipped / 2": model.step_size / 2,
            "shipped": model.step_size, "shipped x 2": model.step_size * 2}


def step_size_rows(n_samples: int, *, shipped: dict) -> list[dict]:
    """The three quality figures of the shipped model's samples at each step size of
    :func:`compared_step_sizes` (``shipped``: the figures already measured at its own step)."""
    from scorelab.ncsn.quality import CONFIDENT, FRECHET, SMALLEST_CLASS

    rows = []
    for name, step in compared_step_sizes().items():
        figures = shipped if name == "shipped" else sample_quality(
            n_samples=n_samples, step_size=step)[0]
        label = f"step {step:.1e} ({name}), 10 steps a level"
        rows += [row("ncsn steps", f"{label}: {CONFIDENT}", figures[CONFIDENT][0],
                     note=f"{n_samples} samples"),
                 row("ncsn steps", f"{label}: {SMALLEST_CLASS}", figures[SMALLEST_CLASS][0]),
                 row("ncsn steps", f"{label}: {FRECHET}", figures[FRECHET][0])]
    return rows


if __name__ == "__main__":
    from scorelab.bench.__main__ import print_table

    print_table(ncsn_rows(quick=False))
