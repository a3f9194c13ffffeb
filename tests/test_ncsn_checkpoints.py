"""Checkpoints: atomic writes, exact resume after SIGKILL, clear errors on bad files."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scorelab.ncsn import NCSN, CheckpointError, latest_checkpoint, load_checkpoint, train_NCSN
from scorelab.ncsn import checkpoints
from scorelab.ncsn.checkpoints import load_training_state, read_checkpoint
from scorelab.noise import geometric_sigmas

TINY = ["--ngf", "2", "--batch-size", "8", "--n-levels", "3", "--threads", "1", "--no-progress", "--seed", "5"]


def _cli(out, steps, *extra):
    command = [sys.executable, "-m", "scorelab.ncsn", "train", "--out", str(out), "--steps", str(steps), *TINY, *extra]
    return command


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        elif isinstance(a[key], list):
            for x, y in zip(a[key], b[key]):
                _assert_same_state({"_": x}, {"_": y})
        else:
            assert a[key] == b[key], key


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    steps = 80
    subprocess.run(_cli(tmp_path / "straight", steps, "--checkpoint-every", "10"), check=True)
    broken = tmp_path / "broken"
    process = subprocess.Popen(_cli(broken, steps, "--checkpoint-every", "10"))
    deadline = time.monotonic() + 120
    while latest_checkpoint(broken) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = read_checkpoint(latest_checkpoint(broken))["step"]
    assert killed_at < steps  # it really was interrupted
    subprocess.run(_cli(broken, steps, "--checkpoint-every", "10", "--resume"), check=True)
    straight = read_checkpoint(latest_checkpoint(tmp_path / "straight"))
    resumed = read_checkpoint(latest_checkpoint(broken))
    assert resumed["step"] == straight["step"] == steps
    _assert_same_state(straight, resumed)
    _assert_same_state(read_checkpoint(tmp_path / "straight" / "model.pt"), read_checkpoint(broken / "model.pt"))


def _tiny_run(out, n_steps=4, ngf=2):
    torch.manual_seed(0)
    model = NCSN(ngf=ngf, sigmas=geometric_sigmas(1.0, 0.1, 3))
    train_NCSN(model, torch.rand(16, 1, 8, 8), n_steps=n_steps, batch_size=4, out_dir=out,
               checkpoint_every=2, progress=False)
    return model


def test_interrupted_write_leaves_the_previous_checkpoint_valid(tmp_path, monkeypatch):
    model = _tiny_run(tmp_path)
    previous = latest_checkpoint(tmp_path)
    before = previous.read_bytes()

    def crash(obj, handle):  # a write that dies half-way, as a killed process would
        handle.write(b"PK\x03\x04 half a zip archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_weights(tmp_path / "checkpoints" / "step_0000010.pt", model)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == previous and previous.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002.pt", "step_0000004.pt"]
    assert load_checkpoint(previous).config() == model.config()


def test_next_checkpoint_removes_what_a_killed_writer_left(tmp_path):
    _tiny_run(tmp_path)
    folder = tmp_path / "checkpoints"
    leftover = folder / ".step_0000006.pt.999999999.tmp"  # another (dead) process's half write
    leftover.write_bytes(b"PK\x03\x04 half a zip archive")
    model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))
    checkpoints.save_checkpoint(tmp_path, model=model, optimizer=torch.optim.Adam(model.parameters()),
                                ema=None, step=6, generator=torch.Generator(),
                                data_order={"order": torch.arange(4), "cursor": 0}, losses=[1.0])
    assert not leftover.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000002.pt", "step_0000004.pt", "step_0000006.pt"]


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    _tiny_run(tmp_path)
    data = latest_checkpoint(tmp_path).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_with_a_truncated_latest_checkpoint_refuses_to_restart(tmp_path):
    _tiny_run(tmp_path)
    path = latest_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    torch.manual_seed(0)
    model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train_NCSN(model, torch.rand(16, 1, 8, 8), n_steps=6, batch_size=4, out_dir=tmp_path,
                   resume=True, progress=False)


def test_checkpoint_of_another_configuration_names_the_mismatch(tmp_path):
    _tiny_run(tmp_path, ngf=2)
    other = NCSN(ngf=4, sigmas=geometric_sigmas(1.0, 0.1, 3))
    with pytest.raises(CheckpointError, match="ngf=2.*ngf=4"):
        load_training_state(latest_checkpoint(tmp_path), model=other)
    other_ladder = NCSN(ngf=2, sigmas=geometric_sigmas(2.0, 0.1, 3))
    with pytest.raises(CheckpointError, match="sigmas"):
        train_NCSN(other_ladder, torch.rand(16, 1, 8, 8), n_steps=6, batch_size=4, out_dir=tmp_path,
                   resume=True, progress=False)


class _Payload:
    """An object whose unpickling would run code (creates a folder)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "config": {}, "model": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused by torch.load\\(weights_only=True\\)"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_loaded_checkpoint_reproduces_the_trained_model(tmp_path):
    model = _tiny_run(tmp_path)
    loaded = load_checkpoint(latest_checkpoint(tmp_path))  # EMA weights, as the trained model holds
    x = torch.rand(3, 1, 8, 8)
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(loaded(x, labels), model.eval()(x, labels), rtol=0, atol=0)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_0000004.pt"


def test_cli_samples_a_grid_from_a_checkpoint(tmp_path):
    _tiny_run(tmp_path)
    grid = tmp_path / "grid.png"
    subprocess.run(
        [sys.executable, "-m", "scorelab.ncsn", "sample", "--checkpoint", str(latest_checkpoint(tmp_path)),
         "--n", "4", "--n-steps-each", "2", "--out", str(grid)],
        check=True,
    )
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_torchvision_names_the_offline_dataset(tmp_path, monkeypatch, capsys):
    from scorelab.ncsn.__main__ import main

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises ImportError
    with pytest.raises(SystemExit) as stop:
        main(["train", "--dataset", "mnist", "--out", str(tmp_path), "--steps", "1"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "--dataset mnist" in error and "torchvision" in error and "--dataset digits" in error
    assert not any(tmp_path.iterdir())  # nothing was started


def test_cli_builds_the_network_for_the_datasets_images(tmp_path, monkeypatch, single_thread):
    from scorelab import data
    from scorelab.ncsn.__main__ import main

    monkeypatch.setattr(data, "load_mnist", lambda root, train, download: torch.rand(8, 1, 28, 28))
    main(["train", "--dataset", "mnist", "--out", str(tmp_path), "--steps", "2", "--ngf", "2",
          "--batch-size", "4", "--n-levels", "3", "--threads", "1", "--no-progress"])
    config = load_checkpoint(tmp_path / "model.pt").config()
    assert (config["channels"], config["image_size"]) == (1, 28)
    assert '"dataset": "mnist"' in (tmp_path / "run.json").read_text()


def test_cli_help_lists_both_commands():
    result = subprocess.run([sys.executable, "-m", "scorelab.ncsn", "--help"], capture_output=True, text=True, check=True)
    assert "train" in result.stdout and "sample" in result.stdout
