"""The benchmark command's machinery (not its figures): registry, table, files, failures, memory probe.

The figures themselves are measured by ``python -m scorelab.bench``; a timed test is no
benchmark. The memory probe is tested here because its claim is a bound, not a timing.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

import scorelab.bench as bench
from scorelab.bench import ROW_FIELDS, register, row, sections
from scorelab.bench.__main__ import main


def test_every_section_module_is_registered():
    registry = sections()
    assert {"sampling", "memory", "notebooks", "score_matching", "ncsn", "sde", "inpainting",
            "gpu", "densities"} <= set(registry)
    assert all(registry[name] for name in registry)


def test_banana_reference_agrees_with_the_quadrature_where_it_is_accurate():
    from scorelab.bench.densities import largest_error, reference_prob
    from scorelab.densities import Banana

    banana = Banana()
    x = banana.sample(50, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(reference_prob(banana, 1.0, x), banana.perturbed(1.0).prob(x),
                               rtol=1e-9, atol=0.0)
    error, sigma = largest_error(Banana(curvature=2.0), 64, n_points=100, sigmas=(0.1, 1.0))
    assert error > 1e-3 and sigma == 1.0  # the hard case the docstring reports


def test_a_module_with_only_main_becomes_a_printing_section(capsys):
    calls = []

    def main_without_options():
        calls.append("plain")
        print("figure 1.0")

    def main_with_quick(quick=False):
        calls.append(quick)

    assert bench._printing_section(main_without_options)(quick=True) == []
    assert bench._printing_section(main_with_quick)(quick=True) == []
    assert calls == ["plain", True]
    assert "figure 1.0" in capsys.readouterr().out


@pytest.fixture
def toy_sections(monkeypatch):
    """Two sections in a private copy of the registry: one that measures, one that breaks."""
    monkeypatch.setattr(bench, "_REGISTRY", {})

    @register("toy")
    def figures(*, quick: bool) -> list[dict]:
        return [row("toy", "answer", 42.0 if quick else 41.0, unit="s", target="< 50", ok=True),
                row("toy", "no target", 1.5)]

    @register("broken")
    def fails(*, quick: bool) -> list[dict]:
        raise RuntimeError("out of luck")

    monkeypatch.setattr(bench, "sections", lambda: dict(bench._REGISTRY))
    monkeypatch.setattr("scorelab.bench.__main__.sections", lambda: dict(bench._REGISTRY))


def test_cli_prints_the_table_and_writes_csv_and_json(toy_sections, tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path), "toy", "broken"]) == 0
    out = capsys.readouterr().out
    assert "answer" in out and "42" in out and "MISSED" in out and "out of luck" in out
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["metadata"]["quick"] is True
    rows = document["rows"]
    assert [r["figure"] for r in rows] == ["answer", "no target", "fails: failed"]
    assert rows[0] == {"section": "toy", "figure": "answer", "value": 42.0, "unit": "s",
                       "target": "< 50", "ok": True, "note": ""}
    assert rows[1]["ok"] is None and rows[2]["ok"] is False and rows[2]["value"] is None
    with open(tmp_path / "bench.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == ROW_FIELDS and table[0]["value"] == "42.0"
    assert table[2]["value"] == ""  # not measured: an empty cell, as null in the JSON


def test_cli_strict_fails_on_a_missed_target_and_rejects_unknown_sections(toy_sections, tmp_path):
    assert main(["--no-write", "toy"]) == 0
    assert main(["--no-write", "--strict", "toy"]) == 0
    assert main(["--no-write", "--strict", "broken"]) == 1
    with pytest.raises(SystemExit, match="--only must name a section"):
        main(["--no-write", "--only", "nonsense"])


@pytest.mark.slow
def test_memory_probe_without_trajectory_stays_far_under_the_limit():
    from scorelab.bench.memory import LIMIT_MB, measure

    figures = measure(n_particles=100_000)
    assert 0 <= figures["peak"] - figures["before"] < LIMIT_MB * 1e6
    assert figures["announced"] == 0


def test_memory_probe_sees_the_announced_trajectory():
    """20,000 particles, 101 frames of float32 pairs: 16.2 MB announced, and at least that resident."""
    from scorelab.bench.memory import LIMIT_MB, measure

    figures = measure(record_every=10, n_particles=20_000)
    assert figures["announced"] == 101 * 20_000 * 2 * 4
    increase = figures["peak"] - figures["before"]
    assert figures["announced"] * 0.99 <= increase < figures["announced"] + LIMIT_MB * 1e6


# ---------------------------------------------------------------------------------------------
# The GPU section: one explanatory row without CUDA; its checks and its table also run on a CPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_gpu_section_without_cuda_is_one_row_that_is_not_a_failure():
    from scorelab.bench import gpu

    (only,) = gpu.gpu_rows(quick=True)
    assert only["figure"] == "no CUDA device found" and only["ok"] is None
    assert "CUDA" in only["note"]


def _gpu_checks():
    from scorelab.bench import _gpu_paths

    return dict(_gpu_paths.CHECKS)


@pytest.mark.parametrize("name", [
    name if "NCSN sampling" not in name else pytest.param(name, marks=pytest.mark.slow)
    for name in _gpu_checks()])
def test_gpu_path_checks_pass_on_the_cpu(name, single_thread):
    ok, note = _gpu_checks()[name]("cpu")
    assert ok, note


def test_a_broken_gpu_path_is_a_failed_row_with_the_error():
    from scorelab.bench import gpu

    failed = gpu._check("broken path", lambda: 1 / 0)
    assert failed["ok"] is False and "ZeroDivisionError" in failed["note"]


def test_gpu_timing_table_has_every_variant_and_both_targets(single_thread):
    from scorelab.bench import gpu

    rows = gpu.timing_rows(device="cpu", configurations={"MNIST tiny": (28, 2, 4, 3),
                                                          "digits tiny": (8, 2, 4, 3)},
                           variants={"fp32": {}, "--amp": {"amp": True}},
                           steps=1, repeats=1, warmup=1)
    figures = [r["figure"] for r in rows]
    assert figures == ["MNIST tiny step, fp32", "MNIST tiny step, --amp",
                       "MNIST tiny: fastest step vs our fp32", "digits tiny step, fp32",
                       "digits tiny step, --amp", "digits tiny: fastest step"]
    assert all(r["value"] > 0 for r in rows)
    assert rows[2]["target"] == ">= 2" and rows[5]["target"] == "< 15"
    assert isinstance(rows[2]["ok"], bool) and "not shipped" in rows[2]["note"]
