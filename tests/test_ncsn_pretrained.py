"""The checkpoint shipped inside the package: provenance, hash check, loading and sampling."""

import shutil

import pytest
import torch

from scorelab.ncsn import NCSN, CheckpointError, checkpoints, load_pretrained, pretrained_info


def test_shipped_checkpoint_is_small_and_its_record_matches_the_file():
    info = pretrained_info("digits")
    path = checkpoints.PRETRAINED_DIR / "digits.pt"
    assert path.stat().st_size == info["size_bytes"] < 5_000_000
    assert checkpoints.sha256(path) == info["sha256"]
    assert info["command"].startswith("python -m scorelab.ncsn train ")
    assert "seed" in info and "wall_time_s" in info and "hardware" in info


def test_shipped_checkpoint_loads_and_samples_digit_shaped_images():
    model = load_pretrained("digits")
    assert isinstance(model, NCSN) and model.config() == pretrained_info("digits")["config"]
    images = model.sample(6, generator=torch.Generator().manual_seed(0), n_steps_each=2)
    assert images.shape == (6, 1, 8, 8)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05


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
