"""The benchmark command's machinery (not its figures): registry, table, files, failures, memory probe.

The figures themselves are measured by ``python -m scorelab.bench``; a timed test is no
benchmark. The memory probe is tested here because its claim is a bound, not a timing.
"""

from __future__ import annotations

import csv
import json

import pytest

import scorelab.bench as bench
from scorelab.bench import ROW_FIELDS, register, row, sections
from scorelab.bench.__main__ import main


def test_every_section_module_is_registered():
    registry = sections()
    assert {"sampling", "memory", "notebooks", "score_matching", "ncsn", "sde", "inpainting"} <= set(registry)
    assert all(registry[name] for name in registry)


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
