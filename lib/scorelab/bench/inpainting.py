"""Benchmark section ``inpainting``: completions of masked test digits by the shipped NCSN.

Run with ``python -m scorelab.bench inpainting`` (or ``python -m scorelab.bench.inpainting``).
For two masks (the top half known, the left half known), one completion of each of the first
200 test digits (60 with ``--quick``) by :func:`scorelab.ncsn.inpaint` with the model's own
sampling settings, and the same digits with the unknown pixels set to the mean training
digit. Each is judged by the digits classifier (:func:`scorelab.ncsn.inpaint.completion_shares`):

- confident share: completions assigned to some digit with probability > 0.9;
  target: the inpainting's share at least 0.3 above the mean fill's;
- true-digit share: completions assigned to the digit the image was before masking;
  target: above 0.5 for the inpainting (the mean fill's share is reported beside it).
"""

from __future__ import annotations

import time

import torch

from scorelab.bench import register, row

SECTION = "inpainting"
N_DIGITS = 200
CONFIDENT_MARGIN = 0.3
MIN_TRUE_DIGIT = 0.5


def measure(*, n_digits: int = N_DIGITS, seed: int = 0) -> dict:
    """Shares for each mask and method, and the inpainting time (s), on the first test digits."""
    from scorelab.data import load_digits
    from scorelab.metrics import digits_classifier
    from scorelab.ncsn import inpaint, load_pretrained
    from scorelab.ncsn.inpaint import completion_shares, keep_columns, keep_rows, mean_fill

    model = load_pretrained("digits")
    images, labels = load_digits("test", return_labels=True)
    images, labels = images[:n_digits], labels[:n_digits]
    mean_digit = load_digits("train").mean(dim=0)  # (1, 8, 8)
    classifier = digits_classifier()
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for name, mask in (("top half known", keep_rows(4)), ("left half known", keep_columns(4))):
        start = time.perf_counter()
        completed = inpaint(model, images, mask, generator=generator)
        elapsed = time.perf_counter() - start
        filled = mean_fill(images, mask, mean_digit)
        results[name] = {
            "inpainting": completion_shares(completed, labels, classifier=classifier),
            "mean fill": completion_shares(filled, labels, classifier=classifier),
            "seconds": elapsed,
        }
    return results


@register(SECTION)
def inpainting_rows(*, quick: bool) -> list[dict]:
    """The section's figures: confident and true-digit shares, inpainting beside the mean fill."""
    n_digits = 60 if quick else N_DIGITS
    rows = []
    for name, result in measure(n_digits=n_digits).items():
        inpainted, filled = result["inpainting"], result["mean fill"]
        note = f"{n_digits} test digits, one completion each ({result['seconds']:.0f} s)"
        rows += [
            row(SECTION, f"{name}: confident share, inpainting", inpainted["confident"],
                target=f">= mean fill + {CONFIDENT_MARGIN} = "
                       f"{filled['confident'] + CONFIDENT_MARGIN:.2f}",
                ok=inpainted["confident"] >= filled["confident"] + CONFIDENT_MARGIN, note=note),
            row(SECTION, f"{name}: confident share, mean fill", filled["confident"]),
            row(SECTION, f"{name}: true-digit share, inpainting", inpainted["true digit"],
                target=f"> {MIN_TRUE_DIGIT}", ok=inpainted["true digit"] > MIN_TRUE_DIGIT,
                note=note),
            row(SECTION, f"{name}: true-digit share, mean fill", filled["true digit"]),
        ]
    return rows


if __name__ == "__main__":
    from scorelab.bench.__main__ import print_table

    print_table(inpainting_rows(quick=False))
