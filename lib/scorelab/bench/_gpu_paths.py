"""The CUDA paths that ``python -m scorelab.bench --only gpu`` checks: ``CHECKS``, (name, test).

Each test takes the device (``"cuda"``; the package's tests also run them on ``"cpu"``) and
returns (ok, note). "Reproducible" means: the same result twice for a seeded generator on
the CPU, and twice for one on the device, and the result on the device.
"""

from __future__ import annotations

import tempfile

import torch


def same_twice(draw, device) -> tuple[bool, str]:
    """``draw(generator)`` gives the same tensor twice per generator device, on ``device``."""
    for where in ("cpu", device):
        first = draw(torch.Generator(where).manual_seed(0))
        again = draw(torch.Generator(where).manual_seed(0))
        if first.device.type != torch.device(device).type or not torch.equal(first, again):
            return False, f"generator on {where}: not reproducible, or not on {device}"
    return True, "reproducible with a generator on the CPU and on the device"


def _mixture():
    from scorelab.densities import GaussianMixture

    return GaussianMixture(torch.tensor([0.8, 0.2]), torch.tensor([[5.0, 5.0], [-5.0, -5.0]]),
                           torch.tensor([1.0, 1.0]))


def densities(device) -> tuple[bool, str]:
    from scorelab.densities import Banana

    mixture, banana = _mixture(), Banana()
    for density in (mixture, banana, banana.perturbed(0.5)):
        ok, note = same_twice(lambda g: density.sample(256, g, device=device), device)
        if not ok:
            return False, f"{type(density).__name__}.sample: {note}"
    x = mixture.sample(256, torch.Generator().manual_seed(1))
    close = torch.allclose(mixture.score(x.to(device)).cpu(), mixture.score(x), atol=1e-4)
    return close, "samples reproducible; scores on the device equal the CPU's" if close else \
        "scores on the device differ from the CPU's"


def samplers(device) -> tuple[bool, str]:
    from scorelab import sde
    from scorelab.langevin import annealed_langevin_dynamics, langevin_dynamics, mala

    mixture, ve = _mixture(), sde.VESDE(0.1, 20.0)
    x0 = torch.rand(512, 2, device=device) * 16 - 8
    score = lambda x, sigma: mixture.perturbed(float(sigma)).score(x)  # noqa: E731
    runs = {
        "langevin_dynamics": lambda g: langevin_dynamics(mixture.score, x0, 0.1, 20,
                                                         generator=g, progress=False),
        "annealed_langevin_dynamics": lambda g: annealed_langevin_dynamics(
            score, x0, [20.0, 5.0, 1.0], 0.05, 10, generator=g, progress=False),
        "mala": lambda g: mala(mixture.log_prob, mixture.score, x0, 0.1, 20, generator=g,
                               progress=False)[0],
        "euler_maruyama": lambda g: sde.euler_maruyama(score, ve, x0 * 20, 20, generator=g),
        "predictor_corrector": lambda g: sde.predictor_corrector(score, ve, x0 * 20, 20,
                                                                 snr=0.16, generator=g),
    }
    for name, run in runs.items():
        ok, note = same_twice(run, device)
        if not ok:
            return False, f"{name}: {note}"
    return True, f"{', '.join(runs)}: {note}"


def score_matching(device) -> tuple[bool, str]:
    from scorelab.nets import BasicNetwork
    from scorelab.training import DenoisingScoreMatching, SlicedScoreMatching

    data = _mixture().sample(4096, torch.Generator().manual_seed(0), device=device)
    notes = []
    for trainer in (DenoisingScoreMatching(BasicNetwork(2).to(device), 1.0),
                    SlicedScoreMatching(BasicNetwork(2).to(device), variance_reduction=True)):
        losses = trainer.train(data, 300, 128, generator=torch.Generator(device).manual_seed(0),
                               progress=False)
        first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
        notes.append(f"{type(trainer).__name__} {first:.3g} -> {last:.3g}")
        if not last < first:
            return False, f"{notes[-1]}: the loss did not fall"
    return True, "; ".join(notes)


def ncsn_sampling(device) -> tuple[bool, str]:
    from scorelab.ncsn import inpaint, load_pretrained
    from scorelab.ncsn.inpaint import keep_rows

    model = load_pretrained("digits", device=device)
    ok, note = same_twice(lambda g: model.sample(16, generator=g, n_steps_each=5), device)
    if not ok:
        return False, f"sample: {note}"
    images = model.sample(4, generator=torch.Generator(device).manual_seed(1), n_steps_each=5)
    mask = keep_rows(4).to(device)
    ok, note = same_twice(lambda g: inpaint(model, images, mask, generator=g, n_steps_each=5),
                          device)
    return ok, ("sample and inpaint: " if ok else "inpaint: ") + note


def ncsn_training(device) -> tuple[bool, str]:
    from scorelab.data import load_digits
    from scorelab.ncsn import NCSN, train_NCSN

    data, notes = load_digits("train"), []
    for options in ({}, {"amp": True, "channels_last": True}):
        with tempfile.TemporaryDirectory() as out:
            runs = []
            for n_steps, resume in ((8, False), (4, False), (8, True)):
                torch.manual_seed(0)
                model = NCSN(ngf=8, device=device)
                folder = f"{out}/straight" if len(runs) == 0 else f"{out}/resumed"
                runs.append(train_NCSN(model, data, n_steps=n_steps, batch_size=32, out_dir=folder,
                                       checkpoint_every=4, resume=resume, progress=False,
                                       **options))
                weights = {k: v.clone() for k, v in model.state_dict().items()}
                runs[-1] = (runs[-1], weights)
        (straight, w_straight), (_, _), (resumed, w_resumed) = runs
        if straight != resumed or any(not torch.equal(w_straight[k], w_resumed[k])
                                      for k in w_straight):
            return False, f"{options or 'fp32'}: the resumed run differs from the straight one"
        notes.append(f"{'amp+channels-last' if options else 'fp32'} resumed exactly")
    return True, "; ".join(notes)


CHECKS = [
    ("densities: samples and scores", densities),
    ("samplers: Langevin, annealed, MALA, SDE", samplers),
    ("DSM and SSM training", score_matching),
    ("NCSN sampling and inpainting", ncsn_sampling),
    ("train_NCSN, resumed", ncsn_training),
]
