"""Benchmark section ``memory``: peak resident memory of a large annealed Langevin run.

100,000 2-D particles on the NCSN toy mixture, 10 levels x 100 steps (1,000 steps), one
thread, each run in its own Python process so that nothing else shares its peak:

- without a trajectory: the increase of the process's peak resident set size (RSS) over its
  RSS just before sampling (after imports and a small warm-up run), against 200 MB;
- with ``return_trajectory=True, record_every=10``: the bytes that the sampler announces it
  will keep (``scorelab.langevin.trajectory_bytes``, shown in its progress bar) and the
  measured increase, which must cover that announcement and exceed it by less than 200 MB.

RSS, not ``tracemalloc``: torch allocates its tensors outside Python's allocator. On Linux
the peak is reset right before sampling (``/proc/self/clear_refs``), elsewhere the lifetime
peak of ``resource.getrusage`` is used, which can only overstate the increase.
"""

from __future__ import annotations

import json
import subprocess
import sys

from scorelab.bench import register, row

SECTION = "memory"
N_PARTICLES = 100_000
N_LEVELS = 10
N_STEPS_EACH = 100
RECORD_EVERY = 10
LIMIT_MB = 200.0

# Runs in a fresh interpreter; prints one JSON line with the RSS figures in bytes.
_CHILD = r"""
import json, os, resource, sys
import torch
from scorelab.densities import ncsn_toy_mixture
from scorelab.langevin import annealed_langevin_dynamics, trajectory_bytes
from scorelab.noise import geometric_sigmas

n_particles, n_levels, n_steps_each, record_every = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(1)
mixture = ncsn_toy_mixture()
sigmas = geometric_sigmas(20.0, 1.0, n_levels)
generator = torch.Generator().manual_seed(0)
x0 = 16.0 * torch.rand(n_particles, 2, generator=generator) - 8.0

def run(x, **kwargs):
    return annealed_langevin_dynamics(mixture.perturbed_score, x, sigmas, 0.1, n_steps_each,
                                      generator=generator, progress=False, **kwargs)

def status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)

run(x0[:1000])  # warm-up: lazy initialisation and the per-level constants are not the sampler's
recording = record_every > 0
kwargs = {"return_trajectory": True, "record_every": record_every} if recording else {}
announced = trajectory_bytes(x0, n_levels * n_steps_each, record_every) if recording else 0
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak RSS (VmHWM) of this process
    before, method = status("VmRSS"), "VmHWM after reset"
except OSError:
    scale = 1 if sys.platform == "darwin" else 1024
    before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "ru_maxrss"
result = run(x0, **kwargs)
if method == "ru_maxrss":
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
else:
    peak = status("VmHWM")
print(json.dumps({"before": before, "peak": peak, "announced": announced, "method": method}))
"""


def measure(*, record_every: int = 0, n_particles: int = N_PARTICLES) -> dict:
    """Run the sampler in a fresh process; return its RSS figures (bytes).

    ``record_every=0`` samples without a trajectory. Keys: before, peak, announced, method.
    """
    arguments = [str(n) for n in (n_particles, N_LEVELS, N_STEPS_EACH, record_every)]
    completed = subprocess.run([sys.executable, "-c", _CHILD, *arguments], capture_output=True,
                               text=True, check=False, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {completed.stderr.strip()[-500:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


@register(SECTION)
def peak_memory(*, quick: bool) -> list[dict]:
    """Rows: peak RSS increase without and with a recorded trajectory, and the announced size."""
    setting = f"{N_PARTICLES:,} particles, {N_LEVELS}x{N_STEPS_EACH} steps"
    plain = measure()
    increase = (plain["peak"] - plain["before"]) / 1e6
    rows = [row(SECTION, f"peak RSS increase, no trajectory, {setting}", increase, unit="MB",
                target=f"< {LIMIT_MB:.0f}", ok=increase < LIMIT_MB, note=plain["method"])]
    recorded = measure(record_every=RECORD_EVERY)
    announced = recorded["announced"] / 1e6
    increase = (recorded["peak"] - recorded["before"]) / 1e6
    rows.append(row(SECTION, f"trajectory size announced, record_every={RECORD_EVERY}", announced,
                    unit="MB", note="shown in the progress bar; a warning above 512 MiB"))
    rows.append(row(SECTION, f"peak RSS increase, record_every={RECORD_EVERY}", increase,
                    unit="MB", target=f"announced .. announced + {LIMIT_MB:.0f}",
                    ok=announced * 0.99 <= increase < announced + LIMIT_MB,
                    note=recorded["method"]))
    return rows
