"""The checkpoint shipped inside the package: provenance, hash check, loading and sampling."""

import shutil

import pytest
import torch

from scorelab.ncsn import NCSN, CheckpointError, checkpoints, digits_quality, load_pretrained, pretrained_info
from scorelab.ncsn.quality import missed_thresholds


def test_shipped_checkpoint_is_small_and_its_record_matches_the_file():
    info = pretrained_info("digits")
    path = checkpoints.PRETRAINED_DIR / "digits.pt"
    assert path.stat().st_size == info["size_bytes"] < 5_000_000
    assert checkpoints.sha256(path) == info["sha256"]
    assert info["command"].startswith("python -m scorelab.ncsn train ")
    assert "seed" in info and "wall_time_s" in info and "hardware" in info


def test_shipped_checkpoint_loads_with_its_recorded_settings():
    model, info = load_pretrained("digits"), pretrained_info("digits")
    assert isinstance(model, NCSN) and model.config() == info["config"]
    assert (model.step_size, model.n_steps_each) == (info["sampling"]["step_size"],
                                                     info["sampling"]["n_steps_each"])
    assert not model.training


@pytest.mark.slow
def test_shipped_checkpoint_meets_the_chapters_quality_thresholds():
    """200 samples at the recorded settings: digits a classifier is confident about, every
    class present, close to the test digits (an untrained network fails all three)."""
    model = load_pretrained("digits")
    samples = model.sample(200, generator=torch.Generator().manual_seed(0))
    report = digits_quality(samples, generator=torch.Generator().manual_seed(0))
    assert missed_thresholds(report) == [], report


def test_missed_thresholds_names_each_miss():
    good = {"confident share": (0.6, 0.7), "smallest class share": (0.05, 0.09),
            "PCA Frechet distance": (0.2, 0.07)}
    assert missed_thresholds(good) == []
    bad = {"confident share": (0.5, 0.7), "smallest class share": (0.0, 0.09),
           "PCA Frechet distance": (0.9, 0.07)}
    missed = missed_thresholds(bad)
    assert [m.split(" ")[0] for m in missed] == ["confident", "smallest", "PCA"]


def test_a_damaged_shipped_file_is_refused(tmp_path, monkeypatch):
    for name in ("digits.pt", "digits.json"):
        shutil.copy(checkpoints.PRETRAINED_DIR / name, tmp_path / name)
    data = bytearray((tmp_path / "digits.pt").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "digits.pt").write_bytes(bytes(data))
    monkeypatch.setattr(checkpoints, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_pretrained("digits")


def test_unknown_pretrained_name_raises():
    with pytest.raises(ValueError, match="name must be one of the shipped models"):
        load_pretrained("cifar10")


def test_a_chain_that_blows_up_is_not_hidden_by_the_clamp():
    import warnings

    from scorelab.ncsn.refinenet import summary_table

    model = load_pretrained("digits")
    with pytest.warns(RuntimeWarning, match="the chain blew up"):
        model.sample(4, step_size=1.0, n_steps_each=5, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.sample(4, generator=torch.Generator().manual_seed(0))
    assert summary_table(model) == summary_table(model.net)
    with pytest.raises(ValueError, match="net must be a CondRefineNetDilated"):
        summary_table(object())
