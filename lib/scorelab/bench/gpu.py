"""Benchmark section ``gpu``: every CUDA path of the package, and the training step side by side.

Run with ``python -m scorelab.bench --only gpu`` (from the repository root, so that the solution
notebooks are found) on a machine with a CUDA GPU. Without one the section prints a single
row saying that no CUDA device was found; that is not a failure (the course runs on CPUs).

On a GPU it reports

- one row per CUDA path, ok when it ran and gave what it must: densities' samples and scores,
  the Langevin and SDE samplers with a CUDA and a CPU generator (reproducible for each), DSM
  and SSM training, the shipped NCSN's sampling and inpainting, ``train_NCSN`` with a resume
  that continues bit for bit, the command line with ``--amp``, and every notebook of
  ``solutions/`` that picks ``cuda`` when it is available, and chapter 6, run to the end;
- the time of one training step (ms, median of 5 timed runs of ``TIMED_STEPS`` steps after a
  warm-up) of the MNIST configuration ``CondRefineNetDilated(1, 28, ngf=64, 10)`` at batch 128
  and of the 8x8 digits configuration at ngf = 16, each in fp32, ``--amp``,
  ``--amp --channels-last`` and ``--amp --channels-last --compile``, with the targets of
  issue 13: the best MNIST step at least 2x faster than fp32, the 8x8 step under 15 ms;
- (without ``--quick``) the mean loss of steps 901-1000 of the MNIST configuration with
  ``--amp`` against fp32's, within 2 %.

The reference is our own fp32 step: the authors' network cannot be shipped with the course,
so "2x the authors' fp32 code" is measured here as 2x our fp32 step (which the issue measured
at 1.05x the authors' on an H200). The 28x28 images are the 8x8 digits upsampled (MNIST's
shape, offline); the time of a step does not depend on the pixels.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from scorelab.bench import register, row

SECTION = "gpu"
TIMED_STEPS = 20
VARIANTS = {  # name -> train_NCSN options
    "fp32": {},
    "--amp": {"amp": True},
    "--amp --channels-last": {"amp": True, "channels_last": True},
    "--amp --channels-last --compile": {"amp": True, "channels_last": True, "compile": True},
}
#: name -> (image size, ngf, batch size, levels)
CONFIGURATIONS = {"MNIST 28x28 ngf=64": (28, 64, 128, 10), "digits 8x8 ngf=16": (8, 16, 128, 10)}


def images(size: int) -> torch.Tensor:
    """The training digits (N, 1, size, size) on [0, 1], upsampled bilinearly from 8x8."""
    from scorelab.data import load_digits

    digits = load_digits("train")  # (N, 1, 8, 8)
    if size == 8:
        return digits
    upsampled = torch.nn.functional.interpolate(digits, size=(size, size), mode="bilinear")
    return upsampled.clamp(0, 1)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_milliseconds(configuration: tuple[int, int, int, int], options: dict, *, device="cuda",
                      steps: int = TIMED_STEPS, repeats: int = 5, warmup: int = 10) -> float:
    """Median time (ms) of one ``train_NCSN`` step (EMA included) with ``options``."""
    from scorelab.ncsn import NCSN
    from scorelab.ncsn.training import make_trainer
    from scorelab.noise import geometric_sigmas

    size, ngf, batch_size, levels = configuration
    torch.manual_seed(0)
    model = NCSN(image_size=size, ngf=ngf, sigmas=geometric_sigmas(1.0, 0.01, levels),
                 device=device)
    trainer, batches, generator = make_trainer(model, images(size), batch_size=batch_size,
                                               **options)
    trainer.run(batches, warmup, generator=generator, progress=False, log_every=warmup)
    times = []
    for _ in range(repeats):
        _synchronize(model.device)
        start = time.perf_counter()
        trainer.run(batches, steps, generator=generator, progress=False, log_every=steps)
        _synchronize(model.device)  # (run reads the losses at its end: already synchronised)
        times.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(times)


def timing_rows(*, device="cuda", configurations=CONFIGURATIONS, variants=VARIANTS,
                **timing) -> list[dict]:
    """The side-by-side table: one row per (configuration, variant), with the two targets."""
    rows = []
    for name, configuration in configurations.items():
        times = {}
        for variant, options in variants.items():
            try:
                times[variant] = step_milliseconds(configuration, options, device=device, **timing)
            except Exception as error:  # noqa: BLE001 - e.g. compile without a compiler
                rows.append(row(SECTION, f"{name} step, {variant}", float("nan"), unit="ms",
                                ok=False, note=f"{type(error).__name__}: {str(error)[:120]}"))
                continue
            speedup = times.get("fp32", float("nan")) / times[variant]
            rows.append(row(SECTION, f"{name} step, {variant}", times[variant], unit="ms",
                            note=f"{speedup:.2f}x fp32; batch {configuration[2]}, median of "
                                 f"{timing.get('repeats', 5)}"))
        rows += _timing_targets(name, times)
    return rows


def _timing_targets(name: str, times: dict) -> list[dict]:
    fastest = min(times, key=times.get, default=None)
    if fastest is None:
        return []
    if name.startswith("MNIST") and "fp32" in times:
        speedup = times["fp32"] / times[fastest]
        return [row(SECTION, f"{name}: fastest step vs our fp32", speedup, unit="x",
                    target=">= 2", ok=speedup >= 2.0,
                    note=f"{fastest}; the authors' network is not shipped: our fp32 step "
                         "stands in for it")]
    if name.startswith("digits"):
        return [row(SECTION, f"{name}: fastest step", times[fastest], unit="ms",
                    target="< 15", ok=times[fastest] < 15.0, note=fastest)]
    return []


def amp_loss_rows(*, device="cuda", steps: int = 1000, configuration=CONFIGURATIONS[
        "MNIST 28x28 ngf=64"]) -> list[dict]:
    """Mean loss of the last 100 of ``steps`` steps with ``--amp`` against fp32 (within 2 %)."""
    from scorelab.ncsn import NCSN, train_NCSN
    from scorelab.noise import geometric_sigmas

    size, ngf, batch_size, levels = configuration
    finals = {}
    for name, amp in (("fp32", False), ("--amp", True)):
        torch.manual_seed(0)
        model = NCSN(image_size=size, ngf=ngf, sigmas=geometric_sigmas(1.0, 0.01, levels),
                     device=device)
        losses = train_NCSN(model, images(size), n_steps=steps, batch_size=batch_size,
                            progress=False, amp=amp, log_every=100)
        finals[name] = statistics.fmean(losses[-100:])
    gap = abs(finals["--amp"] - finals["fp32"]) / finals["fp32"]
    return [row(SECTION, f"MNIST-shaped loss, steps {steps - 99}-{steps}, --amp vs fp32", gap,
                target="< 0.02", ok=gap < 0.02,
                note=f"fp32 {finals['fp32']:.4g}, --amp {finals['--amp']:.4g} (relative gap)")]


def _check(name: str, test) -> dict:
    """One row: ``test()`` returns (ok, note); an exception is a failed path."""
    try:
        ok, note = test()
    except Exception as error:  # noqa: BLE001 - one broken path must not hide the others
        ok, note = False, f"{type(error).__name__}: {str(error)[:150]}"
    return row(SECTION, name, float(ok), ok=ok, note=note)


def path_rows(*, device="cuda", notebooks: bool = True, quick: bool = False) -> list[dict]:
    """One row per CUDA path of the package (see the module's docstring)."""
    from scorelab.bench import _gpu_paths as paths

    checks = [(name, lambda test=test: test(device)) for name, test in paths.CHECKS]
    rows = [_check(name, test) for name, test in checks]
    rows.append(_check("command line train --amp --resume", lambda: _cli(device)))
    if notebooks:
        rows += notebook_rows(quick=quick)
    return rows


def _cli(device) -> tuple[bool, str]:
    """The training command line with --amp on ``device``, interrupted and resumed."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "scorelab.ncsn", "train", "--out", out, "--ngf", "8",
                   "--batch-size", "32", "--device", str(device), "--amp", "--no-progress",
                   "--checkpoint-every", "5"]
        subprocess.run([*command, "--steps", "5"], check=True, capture_output=True)
        subprocess.run([*command, "--steps", "10", "--resume"], check=True, capture_output=True)
        record = (Path(out) / "run.json").read_text()
    return '"amp": true' in record, "10 steps, resumed at 5; run.json written"


def cuda_notebooks() -> list[Path]:
    """The solution notebooks that pick ``cuda`` when it is available, and chapter 6."""
    from scorelab.bench.notebooks import book_directory

    book = book_directory()
    if book is None:
        return []
    solutions = sorted((book.parent / "solutions").glob("[0-9][0-9]_*.ipynb"))
    picking = [path for path in solutions if "torch.cuda.is_available()" in path.read_text()]
    return picking + sorted(book.glob("06_*.ipynb"))


def notebook_rows(*, quick: bool = False) -> list[dict]:
    """Each notebook that picks cuda, executed to the end in a fresh kernel (seconds)."""
    from scorelab.bench.notebooks import execute_seconds

    found = cuda_notebooks()
    if not found:
        return [row(SECTION, "notebooks on cuda", float("nan"), ok=False,
                    note="no solutions/ notebooks found; run from the repository root")]
    rows = []
    for path in found[:1] if quick else found:
        try:
            seconds, ok, note = execute_seconds(path), True, "ran to the end"
        except Exception as error:  # noqa: BLE001
            seconds, ok, note = float("nan"), False, f"{type(error).__name__}: {str(error)[:120]}"
        rows.append(row(SECTION, f"{path.parent.name}/{path.stem} on cuda", seconds, unit="s",
                        ok=ok, note=note))
    return rows


@register(SECTION)
def gpu_rows(*, quick: bool) -> list[dict]:
    """Every CUDA path and the timing table; one explanatory row without a CUDA device."""
    if not torch.cuda.is_available():
        return [row(SECTION, "no CUDA device found", float("nan"), ok=None,
                    note="nothing to check: this section needs a CUDA GPU (the course runs on "
                         "CPUs; run it where torch.cuda.is_available() is True)")]
    device = torch.cuda.get_device_name(0)
    rows = [row(SECTION, f"device: {device}", torch.cuda.device_count(), unit="GPUs",
                note=f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 "
                     f"{'yes' if torch.cuda.is_bf16_supported() else 'no (fp16 + GradScaler)'}")]
    rows += path_rows(device="cuda", quick=quick)
    rows += timing_rows(device="cuda")
    rows += amp_loss_rows(device="cuda", steps=200 if quick else 1000)
    return rows


if __name__ == "__main__":
    from scorelab.bench.__main__ import print_table

    print_table(gpu_rows(quick="--quick" in sys.argv))
