"""Training with several processes (DistributedDataParallel over gloo, on the CPU) via torchrun.

Each torchrun launch starts two Python processes that import torch, so these tests are slow.
Tolerance of "the same run": the two-process run differs from the one-process run at twice
the per-process batch only in the order of float sums (the gradient is averaged over the two
ranks instead of over one batch), so its losses agree to a relative 1e-5 and its weights to an
absolute 1e-4 (a tenth of one Adam step at lr 1e-3); with the same number of processes a
resumed run is bit-identical.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scorelab.ncsn import NCSN, CheckpointError, latest_checkpoint, train_NCSN
from scorelab.ncsn import checkpoints
from scorelab.ncsn.checkpoints import read_checkpoint
from scorelab.noise import geometric_sigmas

SETTINGS = ["--ngf", "4", "--n-levels", "3", "--threads", "1", "--no-progress", "--seed", "3"]
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4


def _train(out, steps, batch_size, processes=1, *extra):
    arguments = ["-m", "scorelab.ncsn", "train", "--out", str(out), "--steps", str(steps),
                 "--batch-size", str(batch_size), *SETTINGS, *extra]
    if processes == 1:
        return [sys.executable, *arguments]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *arguments]


def _environment():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _final(out: Path) -> dict:
    return read_checkpoint(latest_checkpoint(out))


@pytest.mark.slow
def test_two_processes_equal_one_process_at_twice_the_batch(tmp_path):
    steps = 6
    two = subprocess.run(_train(tmp_path / "two", steps, 4, 2, "--checkpoint-every", "3"),
                         check=True, capture_output=True, text=True, env=_environment())
    subprocess.run(_train(tmp_path / "one", steps, 8, 1, "--checkpoint-every", "3"), check=True,
                   capture_output=True, env=_environment())
    sharded, whole = _final(tmp_path / "two"), _final(tmp_path / "one")
    assert sharded["world_size"] == 2 and whole["world_size"] == 1
    torch.testing.assert_close(sharded["losses"], whole["losses"], rtol=LOSS_RTOL, atol=0)
    for key in ("model", "ema"):
        for name, value in whole[key].items():
            torch.testing.assert_close(sharded[key][name], value, rtol=0, atol=WEIGHT_ATOL)
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["world_size"] == 2 and record["command"].startswith("torchrun --nproc_per_node=2")
    assert two.stdout.count('"world_size": 2') == 1  # rank 0 alone wrote and printed the record
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "step_0000003.pt", "step_0000006.pt"]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_two_process_run_killed_and_resumed_continues_exactly(tmp_path):
    steps, every = 40, 5
    def command(out, *extra):
        return _train(out, steps, 4, 2, "--checkpoint-every", str(every), *extra)

    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True,
                   env=_environment())
    broken = tmp_path / "broken"
    launcher = subprocess.Popen(command(broken), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=_environment())
    deadline = time.monotonic() + 120
    while latest_checkpoint(broken) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _children(launcher.pid)
    for pid in workers:  # the whole job dies at once, as on a lost machine
        os.kill(pid, signal.SIGKILL)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert len(workers) == 2
    killed_at = read_checkpoint(latest_checkpoint(broken))["step"]
    assert killed_at < steps  # it really was interrupted
    subprocess.run(command(broken, "--resume"), check=True, capture_output=True,
                   env=_environment())
    straight, resumed = _final(tmp_path / "straight"), _final(broken)
    assert resumed["step"] == straight["step"] == steps
    assert torch.equal(resumed["losses"], straight["losses"])
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(resumed[key][name], value), (key, name)


def test_resume_with_another_number_of_processes_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))
    checkpoints.save_checkpoint(
        tmp_path, model=model, optimizer=torch.optim.Adam(model.parameters()), ema=None, step=2,
        generator=torch.Generator(), data_order={"order": torch.arange(16), "cursor": 8},
        losses=[1.0, 1.0], world_size=2)
    with pytest.raises(CheckpointError, match=r"2 process\(es\), but this run has 1.*"
                                              r"--nproc_per_node=2"):
        train_NCSN(model, torch.rand(16, 1, 8, 8), n_steps=4, batch_size=4, out_dir=tmp_path,
                   resume=True, progress=False)
