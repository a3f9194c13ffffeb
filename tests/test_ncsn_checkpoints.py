"""Checkpoints: atomic writes, exact resume after SIGKILL, clear errors on bad files."""

import os
import re
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


def test_interrupted_write_leaves_the_previous_checkpoint_valid(tmp_path, monkeypatch,
                                                                single_thread):
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


def test_next_checkpoint_removes_what_a_killed_writer_left(tmp_path, single_thread):
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


def test_truncated_checkpoint_gives_a_clear_error(tmp_path, single_thread):
    _tiny_run(tmp_path)
    data = latest_checkpoint(tmp_path).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_flipped_byte_inside_a_tensor_is_called_corrupt(tmp_path, single_thread):
    """A checkpoint whose bytes changed after it was written fails the archive's CRC check:
    loading, and resuming from it, refuse instead of training on a wrong weight."""
    _tiny_run(tmp_path)
    path = latest_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    weights = read_checkpoint(path)["model"]
    name, tensor = max(weights.items(), key=lambda item: item[1].numel())
    start = bytes(data).find(tensor.numpy().tobytes())  # the stored bytes of the largest tensor
    assert start > 0, name
    data[start + 4] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*CRC"):
        load_checkpoint(path)
    torch.manual_seed(0)
    model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))
    with pytest.raises(CheckpointError, match="corrupt.*CRC"):
        train_NCSN(model, torch.rand(16, 1, 8, 8), n_steps=6, batch_size=4, out_dir=tmp_path,
                   resume=True, progress=False)
    with pytest.raises(CheckpointError, match="must be a str or a path"):
        load_checkpoint(None)


def test_resume_with_a_truncated_latest_checkpoint_refuses_to_restart(tmp_path, single_thread):
    _tiny_run(tmp_path)
    path = latest_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    torch.manual_seed(0)
    model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train_NCSN(model, torch.rand(16, 1, 8, 8), n_steps=6, batch_size=4, out_dir=tmp_path,
                   resume=True, progress=False)


def test_checkpoint_of_another_configuration_names_the_mismatch(tmp_path, single_thread):
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


def test_loaded_checkpoint_reproduces_the_trained_model(tmp_path, single_thread):
    model = _tiny_run(tmp_path)
    loaded = load_checkpoint(latest_checkpoint(tmp_path))  # EMA weights, as the trained model holds
    x = torch.rand(3, 1, 8, 8)
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(loaded(x, labels), model.eval()(x, labels), rtol=0, atol=0)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_0000004.pt"


def test_cli_samples_a_grid_from_a_checkpoint(tmp_path, single_thread):
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


# ------------------------------------------------------- resuming a run that does not match


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    """A finished 3-step run (8 images, batch 4, EMA 0.999, lr 1e-3): its last checkpoint."""
    out = tmp_path_factory.mktemp("three_steps")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_NCSN(_fresh(), _EIGHT, n_steps=3, batch_size=4, out_dir=out, checkpoint_every=1,
                   progress=False)
    finally:
        torch.set_num_threads(threads)
    return latest_checkpoint(out)


_EIGHT = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _fresh():
    torch.manual_seed(0)
    return NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))


def _resume_from(tmp_path, checkpoint, change=None, **kwargs):
    """Resume from a copy of ``checkpoint`` (its state passed through ``change`` first)."""
    state = torch.load(checkpoint, weights_only=True)
    if change is not None:
        change(state)
    checkpoints._atomic_save(state, tmp_path / "checkpoints" / checkpoint.name)
    settings = {"data": _EIGHT, "n_steps": 4, "batch_size": 4, **kwargs}
    return train_NCSN(_fresh(), settings.pop("data"), out_dir=tmp_path, resume=True,
                      progress=False, **settings)


def test_new_checkpoints_record_the_runs_settings(three_steps):
    state = read_checkpoint(three_steps)
    assert (state["batch_size"], state["data_size"], state["ema_rate"]) == (4, 8, 0.999)
    assert (state["precision"], state["seed"]) == ("float32", 0)
    assert state["data_digest"] == checkpoints.data_digest(_EIGHT)


def test_the_data_digest_reads_values_not_layout_or_device():
    images = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    digest = checkpoints.data_digest(images)
    assert len(digest) == 64
    assert checkpoints.data_digest(images.contiguous(memory_format=torch.channels_last)) == digest
    assert checkpoints.data_digest(images.clone()) == digest
    changed = images.clone()
    changed[2, 1, 3, 3] += 1e-3
    assert checkpoints.data_digest(changed) != digest


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"n_steps": 2}, r"n_steps \(2\) is smaller than the step of checkpoint .*step_0000003"),
        ({"batch_size": 2}, "batch_size=4, but this run has batch_size=2"),
        ({"data": torch.rand(16, 1, 8, 8)}, "data_size=8, but this run has data_size=16"),
        ({"data": _EIGHT.flip(0)}, r"other data: the same number of images \(8\), but other "
                                   r"values \(data digest [0-9a-f]{12}\.\.\."),
        ({"amp": True}, r"precision='float32', but this run has precision='bfloat16': resume with "
                        r"amp=False \(no --amp\) as before"),
        ({"lr": 1e-4}, "lr=0.001, but this run has lr=0.0001"),
        ({"seed": 1}, "seed=0, but this run has seed=1"),
        ({"ema_rate": None}, "an EMA of the weights, but this run has ema_rate=None"),
        ({"ema_rate": 0.9}, "ema_rate=0.999, but this run has ema_rate=0.9"),
    ],
)
def test_a_resume_with_other_settings_is_refused(tmp_path, three_steps, settings, message,
                                                 single_thread):
    with pytest.raises(ValueError, match=message):
        _resume_from(tmp_path, three_steps, **settings)


def test_a_resume_at_the_checkpoints_step_returns_its_losses(tmp_path, three_steps,
                                                             single_thread):
    losses = read_checkpoint(three_steps)["losses"].tolist()
    assert _resume_from(tmp_path, three_steps, n_steps=3) == losses


def _as_old_format(state):
    """A checkpoint written before the run's settings were recorded."""
    for key in ("batch_size", "data_size", "data_digest", "ema_rate", "precision", "seed",
                "world_size", "generator_device"):
        del state[key]


def test_old_checkpoints_resume_and_their_data_order_gives_the_data_size(tmp_path, three_steps,
                                                                         single_thread):
    assert len(_resume_from(tmp_path / "old", three_steps, _as_old_format)) == 4

    def old_with_sixteen_images(state):
        _as_old_format(state)
        state["data_order"] = torch.randperm(16)

    with pytest.raises(CheckpointError, match="data_size=16, but this run has data_size=8"):
        _resume_from(tmp_path / "sixteen", three_steps, old_with_sixteen_images)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("optimizer"), r"is incomplete: it has no 'optimizer'"),
        (lambda s: s.pop("losses"), r"is incomplete: it has no 'losses'"),
        (lambda s: s.update(ema=None),
         r"no EMA \(ema_rate=None\), but this run has ema_rate=0.999"),
        (lambda s: s.update(generator=torch.zeros(5, dtype=torch.uint8)),
         "holds an unusable generator state"),
        (lambda s: s.update(optimizer={"state": {}, "param_groups": []}),
         "its 'optimizer' state does not fit this run"),
        (lambda s: s.update(losses=torch.zeros(2, dtype=torch.float64)), "one loss per step"),
        (lambda s: s.update(data_cursor=99), "data cursor 99 outside its data order"),
    ],
)
def test_a_damaged_training_checkpoint_names_the_file_and_the_part(tmp_path, three_steps, change,
                                                                   message, single_thread):
    with pytest.raises(CheckpointError, match=message) as info:
        _resume_from(tmp_path, three_steps, change)
    assert "step_0000003.pt" in str(info.value)


def test_a_refused_resume_leaves_the_model_untouched(tmp_path, three_steps):
    model = _fresh()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    checkpoints._atomic_save(torch.load(three_steps, weights_only=True),
                             tmp_path / "checkpoints" / three_steps.name)
    with pytest.raises(ValueError, match="n_steps"):
        train_NCSN(model, _EIGHT, n_steps=2, batch_size=4, out_dir=tmp_path, resume=True,
                   progress=False)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


# ---------------------------------------------------------------- loading weights files


def _weights_file(path, change=None, **entries):
    model = _fresh()
    state = {"format_version": 1, "kind": "weights", "config": model.config(),
             "model": model.state_dict(), **entries}
    if change is not None:
        change(state)
    torch.save(state, path)
    return path


def test_random_bytes_are_called_corrupt_not_unsafe(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(torch.randint(256, (4000,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes())
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    for path in (noise, text):
        with pytest.raises(CheckpointError,
                           match="truncated or corrupt, or not a checkpoint") as info:
            load_checkpoint(path)
        assert "could run code" not in str(info.value)


def test_weights_that_disagree_with_the_config_or_are_not_finite_are_refused(tmp_path):
    def other_ladder(state):
        state["model"]["sigmas"] = torch.tensor([2.0, 1.0, 0.5])

    def with_nan(state):
        state["model"]["net.begin_conv.weight"][0] = float("nan")

    with pytest.raises(CheckpointError, match="sigmas buffer .* disagrees with the config"):
        load_checkpoint(_weights_file(tmp_path / "ladder.pt", other_ladder))
    with pytest.raises(CheckpointError, match="non-finite values .* 'net.begin_conv.weight'"):
        load_checkpoint(_weights_file(tmp_path / "nan.pt", with_nan))


def test_a_checkpoint_without_weights_or_with_a_bad_config_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nomodel.pt' holds no model weights"):
        load_checkpoint(_weights_file(tmp_path / "nomodel.pt", lambda s: s.pop("model")))
    with pytest.raises(CheckpointError, match="ngf.pt' has an invalid config: ngf must be"):
        load_checkpoint(_weights_file(tmp_path / "ngf.pt", lambda s: s["config"].update(ngf=1)))
    with pytest.raises(CheckpointError, match="sizes.pt' has an incomplete config: it has no"):
        load_checkpoint(_weights_file(tmp_path / "sizes.pt",
                                      lambda s: s["config"].pop("image_size")))


def test_save_weights_refuses_a_state_dict_that_would_not_load(tmp_path):
    model = _fresh()
    with pytest.raises(ValueError, match="state_dict must be a dict of the model's tensors"):
        checkpoints.save_weights(tmp_path / "a.pt", model, state_dict="x")
    partial = dict(model.state_dict())
    partial.pop("sigmas")
    with pytest.raises(ValueError, match=r"missing \['sigmas'\]"):
        checkpoints.save_weights(tmp_path / "b.pt", model, state_dict=partial)
    assert not any(tmp_path.iterdir())
    path = checkpoints.save_weights(tmp_path / "c.pt", model, state_dict=model.state_dict())
    assert load_checkpoint(path).config() == model.config()


# ---------------------------------------------------------------- the command line's errors


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
        (["--steps", "2", "--checkpoint-every", "-1"],
         "argument --checkpoint-every: must be an integer >= 0"),
        (["--steps", "2", "--threads", "-1"],
         "argument --threads: must be an integer >= 0, got -1"),
        (["--steps", "2", "--device", "bogus"], "argument --device: must be a torch device"),
        (["--steps", "2", "--ngf", "1"], "argument --ngf: must be an integer >= 2"),
        (["--steps", "2", "--lr", "-1"], "argument --lr: must be a positive number"),
        (["--steps", "2", "--ema-rate", "1.5"], r"argument --ema-rate: must lie in \[0, 1\)"),
    ],
)
def test_cli_refuses_bad_training_flags_before_any_work(tmp_path, capsys, arguments, message):
    from scorelab.ncsn.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", str(tmp_path / "run"), *arguments])
    assert stop.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_output_paths_that_would_fail_after_the_work(tmp_path, capsys):
    from scorelab.ncsn.__main__ import main

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    weights = checkpoints.save_weights(tmp_path / "w.pt", _fresh())
    sample = ["sample", "--checkpoint", str(weights), "--n", "1", "--n-steps-each", "1"]
    cases = [
        (["train", "--out", str(a_file), "--steps", "1"], "--out: .* is a file"),
        (sample + ["--out", str(tmp_path / "grid.txt")], "--out: must name an image file"),
        (sample + ["--out", str(tmp_path / "missing" / "grid.png")], "--out: the folder .* does "
                                                                      "not exist"),
        (["sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "g.png")],
         "--checkpoint: .* is not a file"),
    ]
    for arguments, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(arguments)
        assert stop.value.code == 2 and re.search(message, capsys.readouterr().err), arguments
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "w.pt"]


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    from scorelab.ncsn.__main__ import main

    path = _weights_file(tmp_path / "nomodel.pt", lambda s: s.pop("model"))
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "g.png")])
    assert stop.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "error: checkpoint" in error and "holds no model" in error
    assert "Traceback" not in error
