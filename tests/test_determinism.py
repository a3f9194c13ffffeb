"""The same seed gives bit-identical results: twice in one process, and in a fresh process.

Covered: the densities' samplers, plain / annealed Langevin and MALA (with a trajectory), and
DSM and SSM training (the loss history and the trained weights). Bit-identical means equal
bytes (a SHA-256 of each tensor), not close values. Both processes use one thread, as the
chapters do, because a different thread count may change the order of a floating-point sum.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from scorelab.densities import Banana, ncsn_toy_mixture
from scorelab.langevin import annealed_langevin_dynamics, langevin_dynamics, mala
from scorelab.nets import BasicNetwork
from scorelab.noise import geometric_sigmas
from scorelab.seeding import seed_everything
from scorelab.training import DenoisingScoreMatching, SlicedScoreMatching


def _digest(*tensors) -> str:
    """SHA-256 of the tensors' bytes (and shapes, dtypes), or of floats given as a list."""
    hasher = hashlib.sha256()
    for tensor in tensors:
        tensor = torch.as_tensor(tensor).detach().contiguous()
        hasher.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        hasher.update(tensor.numpy().tobytes())
    return hasher.hexdigest()


def _samples(seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    return _digest(ncsn_toy_mixture().sample(500, generator=generator),
                   Banana().sample(500, generator=generator),
                   Banana().perturbed(0.5).sample(500, generator=generator))


def _langevin(seed: int) -> str:
    mixture, generator = ncsn_toy_mixture(), torch.Generator().manual_seed(seed)
    x0 = 16 * torch.rand(500, 2, generator=generator) - 8
    x, trajectory = langevin_dynamics(mixture.score, x0, 0.1, 60, generator=generator,
                                      return_trajectory=True, record_every=7, progress=False)
    return _digest(x, trajectory)


def _annealed(seed: int) -> str:
    mixture, generator = ncsn_toy_mixture(), torch.Generator().manual_seed(seed)
    x0 = 16 * torch.rand(500, 2, generator=generator) - 8
    x = annealed_langevin_dynamics(mixture.perturbed_score, x0, geometric_sigmas(20.0, 1.0, 5), 0.1, 20,
                                   generator=generator, denoise=True, progress=False)
    return _digest(x)


def _mala(seed: int) -> str:
    banana, generator = Banana(), torch.Generator().manual_seed(seed)
    x, rate = mala(banana.log_prob, banana.score, torch.zeros(500, 2), 0.3, 60, generator=generator,
                   progress=False)
    return _digest(x, torch.tensor(rate, dtype=torch.float64))


def _training(method: str, seed: int) -> str:
    generator = seed_everything(seed)  # seeds the global generator for the weights' initialisation
    model = BasicNetwork(input_dim=2, hidden_dims=(32, 32))
    data = ncsn_toy_mixture().sample(1000, generator=generator)
    if method == "DSM":
        trainer = DenoisingScoreMatching(model, sigma=0.5)
    else:
        trainer = SlicedScoreMatching(model, n_projections=2, variance_reduction=False)
    losses = trainer.train(data, n_steps=25, batch_size=64, generator=generator, progress=False)
    return _digest(torch.tensor(losses, dtype=torch.float64), *model.state_dict().values())


CASES = {
    "density samples": _samples,
    "langevin": _langevin,
    "annealed langevin": _annealed,
    "mala": _mala,
    "DSM training": lambda seed: _training("DSM", seed),
    "SSM training": lambda seed: _training("SSM", seed),
}

_CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import test_determinism as cases
print(json.dumps({{name: case({seed}) for name, case in cases.CASES.items()}}))
"""


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_twice_in_one_process_is_bit_identical(name):
    case = CASES[name]
    first, second = case(3), case(3)
    assert first == second
    assert case(4) != first  # the seed matters: the digest is not of something constant


def test_same_seed_in_a_fresh_process_is_bit_identical():
    here = {name: case(3) for name, case in CASES.items()}
    from pathlib import Path

    child = _CHILD.format(tests=str(Path(__file__).resolve().parent), seed=3)
    completed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                               check=True, timeout=120)
    there = json.loads(completed.stdout.strip().splitlines()[-1])
    assert there == here


def test_seed_everything_refuses_a_seed_numpy_cannot_take_before_seeding_anything():
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        seed_everything(2**40)
    assert torch.rand(1) == expected  # torch's global generator was left alone
