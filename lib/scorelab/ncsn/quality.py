"""Quality figures of digit samples, each beside the same figure for real digits.

Used by chapter 6 and the ``ncsn`` benchmark, so both print the same numbers.
"""

from __future__ import annotations

import torch

from scorelab._tensors import randperm

CONFIDENT = "confident share"
SMALLEST_CLASS = "smallest class share"
FRECHET = "PCA Frechet distance"

#: The thresholds chapter 6 and the benchmark hold samples to: a confident share at least
#: this fraction of the real test digits', every class at least this share of the samples,
#: and at most this PCA Frechet distance to the test digits.
CONFIDENCE_RATIO = 0.8
MIN_CLASS_SHARE = 0.03
MAX_FRECHET = 0.3


def digits_quality(
    samples: torch.Tensor, *, generator: torch.Generator | None = None
) -> dict[str, tuple[float, float]]:
    """Three quality figures of 8x8 digit samples, each as (samples, real digits).

    - ``"confident share"``: share of images that a logistic-regression classifier trained
      on the real training split assigns a class with probability > 0.9; the real figure is
      that of the held-out test digits.
    - ``"smallest class share"``: share of the rarest predicted class (real digits: about 0.09).
    - ``"PCA Frechet distance"``: Fréchet distance to the test digits in the 20-component PCA
      space of the training digits; the real figure compares as many randomly chosen training
      digits as there are samples, so both carry the same small-sample bias.

    Parameters
    ----------
    samples : Tensor, shape (N, 1, 8, 8)
        Images on [0, 1], N between 2 and 1,257.
    generator : torch.Generator, optional
        Chooses the real training digits of the reference Fréchet distance.

    Returns
    -------
    dict
        ``{name: (value for the samples, value for real digits)}``.
    """
    from scorelab.data import load_digits
    from scorelab.metrics import class_coverage, classifier_confidence, digits_classifier, pca_frechet_distance

    train = load_digits("train")
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or tuple(samples.shape[1:]) != (1, 8, 8):
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"samples must have shape (N, 1, 8, 8), got {got}")
    if not 2 <= len(samples) <= len(train):
        raise ValueError(f"samples must hold between 2 and {len(train)} images, got {len(samples)}")
    test = load_digits("test")
    classifier = digits_classifier()
    order = randperm(len(train), generator=generator, device=samples.device).cpu()
    real_subset = train[order[: len(samples)]]
    return {
        CONFIDENT: (classifier_confidence(classifier, samples), classifier_confidence(classifier, test)),
        SMALLEST_CLASS: (
            float(class_coverage(classifier, samples).min()),
            float(class_coverage(classifier, test).min()),
        ),
        FRECHET: (
            pca_frechet_distance(samples, test, train),
            pca_frechet_distance(real_subset, test, train),
        ),
    }


def missed_thresholds(report: dict[str, tuple[float, float]]) -> list[str]:
    """The thresholds a :func:`digits_quality` report misses, in words (empty: all met)."""
    (confident, real_confident), (smallest, _), (frechet, _) = (
        report[CONFIDENT], report[SMALLEST_CLASS], report[FRECHET])
    missed = []
    if confident < CONFIDENCE_RATIO * real_confident:
        missed.append(f"{CONFIDENT} {confident:.3f} < {CONFIDENCE_RATIO} x {real_confident:.3f}")
    if smallest < MIN_CLASS_SHARE:
        missed.append(f"{SMALLEST_CLASS} {smallest:.3f} < {MIN_CLASS_SHARE}")
    if frechet > MAX_FRECHET:
        missed.append(f"{FRECHET} {frechet:.3f} > {MAX_FRECHET}")
    return missed
