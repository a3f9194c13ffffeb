"""Benchmark section ``sde``: the VE SDE's samplers and likelihoods on the 0.8/0.2 mixture (chapter 8).

On ``ncsn_toy_mixture()`` with its exact perturbed scores, ``VESDE(sigma_min=0.01, ...)``:

1. Samplers at equal numbers of score evaluations (``BUDGET`` = 200): annealed Langevin (20
   levels of the SDE's ladder x 10 steps, base step 5e-5), Euler-Maruyama (200 steps),
   predictor-corrector (100 predictor + 100 corrector steps, snr 0.16) and the
   probability-flow ODE (RK45 at rtol = atol = 1e-5, which takes the evaluations it needs),
   4,000 particles started from exact samples of p_1 at sigma_max = 50, and from the prior
   N(0, sigma_max^2 I) at sigma_max = 50 and 200. Figures: the weight of the (5, 5) mode
   (target, from the exact p_1: within 0.03 of 0.8 for EM, PC and the ODE) and the energy
   distance to 4,000 exact samples of the data (at sigma_min).
2. Log-likelihoods of 1,000 data points by the ODE against the closed form log p_{sigma_min}:
   mean absolute error with the exact divergence at sigma_max = 1000 (target < 0.01 nats) and
   at 50 (where the prior's own mismatch, about 0.07 nats a point, dominates), and Hutchinson's
   estimator with one Rademacher probe (target: mean error within 0.1 nats).

3. Bits per dimension on the 8x8 digits (dequantised, K = 17 grey levels; 540 test digits).
   A Gaussian fitted to the training digits has a closed-form perturbed score: the ODE with
   the exact divergence must reproduce its closed-form bits per dimension (target: within 0.01
   on 100 test digits). Its own figure on the test digits, next to the uniform density's
   log2 17 = 4.09, is the bar a learned model should beat. A :class:`SigmaConditionedMLP`
   (3 x 256, the digits centred, fresh dequantisation noise every batch) trained for
   ``MLP_STEPS`` steps of continuous DSM is then measured the same way (Hutchinson, one
   probe): the median over the test digits, and the number of test digits whose forward flow
   diverges (more than ``DIVERGED_BITS`` bits per dimension: the flow left the region the
   network was trained on, and its score there sends the point to infinity).

Chapter 8 builds its tables with :func:`run_samplers` and :func:`likelihood_errors`.
"""

from __future__ import annotations

import time

import torch

from scorelab.bench import register, row
from scorelab.densities import GaussianMixture, ncsn_toy_mixture
from scorelab.langevin import annealed_langevin_dynamics
from scorelab.data import DIGITS_GREY_LEVELS, load_digits
from scorelab.metrics import bits_per_dim, energy_distance, mode_weights
from scorelab.nets_continuous import SigmaConditionedMLP
from scorelab.scores import as_score_fn
from scorelab.sde import (VESDE, ContinuousDenoisingScoreMatching, ScoreCounter, euler_maruyama,
                          log_likelihood, predictor_corrector, probability_flow)

SECTION = "sde"
SIGMA_MIN = 0.01
BUDGET = 200
ALD_LEVELS, ALD_STEP = 20, 5e-5
SNR = 0.16
N_PARTICLES = 4_000
N_POINTS = 1_000
DIGITS_SIGMA_MIN, DIGITS_SIGMA_MAX = 0.03, 10.0  # about half a grey level (1/17); > the spread
MLP_STEPS = 3_000
DIVERGED_BITS = 10.0
SAMPLERS = ("annealed Langevin", "Euler-Maruyama", "predictor-corrector", "probability flow")


def run_samplers(score_fn, sde: VESDE, x_T: torch.Tensor, *, budget: int = BUDGET,
                 seed: int = 0, snr: float = SNR) -> dict[str, tuple[torch.Tensor, int]]:
    """Samples of the four samplers from ``x_T``, each with its number of score evaluations.

    Annealed Langevin runs ``ALD_LEVELS`` levels of ``sde.discretize`` with ``budget //
    ALD_LEVELS`` steps each; Euler-Maruyama ``budget`` steps; predictor-corrector ``budget // 2``
    steps with one corrector step each; the ODE as many evaluations as RK45 needs.
    """
    results = {}
    counter = ScoreCounter(score_fn)
    x = annealed_langevin_dynamics(counter, x_T, sde.discretize(ALD_LEVELS), ALD_STEP,
                                   budget // ALD_LEVELS, generator=torch.Generator().manual_seed(seed),
                                   progress=False)
    results[SAMPLERS[0]] = (x, counter.calls)
    counter = ScoreCounter(score_fn)
    x = euler_maruyama(counter, sde, x_T, budget, generator=torch.Generator().manual_seed(seed))
    results[SAMPLERS[1]] = (x, counter.calls)
    counter = ScoreCounter(score_fn)
    x = predictor_corrector(counter, sde, x_T, budget // 2, snr=snr,
                            generator=torch.Generator().manual_seed(seed))
    results[SAMPLERS[2]] = (x, counter.calls)
    counter = ScoreCounter(score_fn)
    x = probability_flow(counter, sde, x_T)
    results[SAMPLERS[3]] = (x, counter.calls)
    return results


def sampler_table(mixture: GaussianMixture, results: dict, reference: torch.Tensor) -> list[tuple]:
    """Rows (sampler, evaluations, weight of the first mode, energy distance to ``reference``)."""
    means = mixture.means.to(reference)
    return [(name, calls, mode_weights(x, means)[0].item(), energy_distance(x, reference))
            for name, (x, calls) in results.items()]


def likelihood_errors(mixture: GaussianMixture, x: torch.Tensor, sigma_max: float, *,
                      exact_prior: bool = False, **options) -> torch.Tensor:
    """ODE log-likelihood minus the closed form log p_{sigma_min}(x), per point (N,).

    ``exact_prior`` puts the true p_1 in place of the prior N(0, sigma_max^2 I); ``options``
    go to :func:`scorelab.sde.log_likelihood` (divergence, n_probes, generator, ...).
    """
    sde = VESDE(SIGMA_MIN, sigma_max)
    if exact_prior:
        options["prior_log_prob"] = lambda y: mixture.perturbed_log_prob(y, sigma_max)
    got = log_likelihood(mixture.perturbed_score, sde, x, **options)
    return got - mixture.perturbed_log_prob(x, SIGMA_MIN)


@register(SECTION)
def samplers(*, quick: bool) -> list[dict]:
    """Rows: the (5, 5) weight and energy distance of each sampler at equal evaluations."""
    mixture = ncsn_toy_mixture()
    n = 1_000 if quick else N_PARTICLES
    generator = torch.Generator().manual_seed(0)
    reference = mixture.perturbed(SIGMA_MIN).sample(n, generator=generator).double()
    starts = {"exact p_1, sigma_max 50": (50.0, mixture.perturbed(50.0).sample(n, generator=generator))}
    for sigma_max in (50.0, 200.0):
        prior = VESDE(SIGMA_MIN, sigma_max).prior_sample((n, 2), generator=generator)
        starts[f"prior, sigma_max {sigma_max:g}"] = (sigma_max, prior)
    rows = []
    for start, (sigma_max, x_T) in starts.items():
        results = run_samplers(mixture.perturbed_score, VESDE(SIGMA_MIN, sigma_max), x_T.double())
        for name, calls, weight, energy in sampler_table(mixture, results, reference):
            has_target = start.startswith("exact") and name != SAMPLERS[0]
            rows.append(row(SECTION, f"{name}, from {start}: weight of (5,5)", weight,
                            target="|w-0.8| < 0.03" if has_target else "",
                            ok=abs(weight - 0.8) < 0.03 if has_target else None,
                            note=f"{calls} score evaluations, {n} particles; "
                                 f"energy distance {energy:.4f}"))
    return rows


@register(SECTION)
def likelihoods(*, quick: bool) -> list[dict]:
    """Rows: errors of the ODE log-likelihood against the closed form, in nats per point."""
    mixture = ncsn_toy_mixture()
    x = mixture.sample(300 if quick else N_POINTS, generator=torch.Generator().manual_seed(1)).double()
    rows = []
    for sigma_max, target in ((1000.0, 0.01), (50.0, None)):
        start = time.perf_counter()
        error = likelihood_errors(mixture, x, sigma_max).abs().mean().item()
        seconds = time.perf_counter() - start
        rows.append(row(SECTION, f"exact divergence, sigma_max {sigma_max:g}: mean |error|", error,
                        unit="nats", target=f"< {target}" if target else "about 0.07 (the prior)",
                        ok=error < target if target else None,
                        note=f"{len(x)} points, {seconds:.1f} s"))
    error = likelihood_errors(mixture, x, 50.0, exact_prior=True).abs().mean().item()
    rows.append(row(SECTION, "exact divergence and exact p_1, sigma_max 50: mean |error|", error,
                    unit="nats", note="the solver's own error"))
    error = likelihood_errors(mixture, x, 1000.0, divergence="hutchinson", n_probes=1,
                              generator=torch.Generator().manual_seed(2))
    mean = error.mean().item()
    rows.append(row(SECTION, "Hutchinson, 1 probe, sigma_max 1000: mean error", mean, unit="nats",
                    target="|mean| < 0.1", ok=abs(mean) < 0.1,
                    note=f"per-point spread {error.std().item():.3f} nats"))
    return rows


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantised training and test digits, flattened: (1257, 64) and (540, 64), float64."""
    train = load_digits("train", dequantize=True, generator=torch.Generator().manual_seed(seed))
    test = load_digits("test", dequantize=True, generator=torch.Generator().manual_seed(seed + 1))
    return train.flatten(1).double(), test.flatten(1).double()


def digits_gaussian(train: torch.Tensor) -> GaussianMixture:
    """The Gaussian N(mean, covariance) of the training digits, as a one-component mixture."""
    return GaussianMixture(torch.ones(1, dtype=train.dtype), train.mean(0, keepdim=True),
                           torch.cov(train.T)[None])


def train_digits_mlp(sde: VESDE, mean: torch.Tensor, *, n_steps: int = MLP_STEPS, seed: int = 0):
    """A sigma-conditioned MLP trained by continuous DSM on the centred training digits, with
    fresh dequantisation noise in every batch of 256; returns its score function."""
    torch.manual_seed(seed)
    levels = load_digits("train").flatten(1) * (DIGITS_GREY_LEVELS - 1)  # integers 0..16
    mean = mean.float()
    model = SigmaConditionedMLP(levels.shape[1], (256, 256, 256), data_scale=0.25)
    generator = torch.Generator().manual_seed(seed)

    def batch(n: int) -> torch.Tensor:
        pixels = levels[torch.randint(len(levels), (n,), generator=generator)]
        return (pixels + torch.rand(pixels.shape, generator=generator)) / DIGITS_GREY_LEVELS - mean

    trainer = ContinuousDenoisingScoreMatching(model, sde, lr=1e-3)
    trainer.train(batch, n_steps, 256, generator=generator, progress=False)
    model.eval()
    return as_score_fn(model)


@register(SECTION)
def digits_likelihoods(*, quick: bool) -> list[dict]:
    """Rows: bits per dimension on the digits, checked on a Gaussian, then a learned model."""
    train, test = digits_split()
    gaussian, sde = digits_gaussian(train), VESDE(DIGITS_SIGMA_MIN, DIGITS_SIGMA_MAX)
    bits = lambda log_p: bits_per_dim(log_p, test.shape[1], n_levels=DIGITS_GREY_LEVELS)  # noqa: E731
    x = test[: 50 if quick else 100]
    start = time.perf_counter()
    ode = bits(log_likelihood(gaussian.perturbed_score, sde, x, prior_log_prob=lambda y:
                              gaussian.perturbed_log_prob(y, DIGITS_SIGMA_MAX)))
    seconds = time.perf_counter() - start
    closed_form = bits(gaussian.perturbed_log_prob(x, DIGITS_SIGMA_MIN))
    error = (ode - closed_form).abs().max().item()
    prior_error = (bits(log_likelihood(gaussian.perturbed_score, sde, x)) - closed_form).abs().max()
    rows = [row(SECTION, "digits, Gaussian: ODE vs closed form, max |error|", error,
                unit="bits/dim", target="< 0.01", ok=error < 0.01,
                note=f"exact divergence and exact p_1, {len(x)} test digits, {seconds:.1f} s; "
                     f"with the prior N(0, {DIGITS_SIGMA_MAX:g}^2 I) {prior_error:.3f}")]
    exact = bits(gaussian.log_prob(test))
    rows.append(row(SECTION, "digits, Gaussian: test bits/dim", exact.mean().item(),
                    unit="bits/dim", note=f"closed form, {len(test)} test digits; training "
                    f"digits {bits(gaussian.log_prob(train)).mean().item():.3f}; uniform 4.087"))
    mean = train.mean(0)
    start = time.perf_counter()
    score_fn = train_digits_mlp(sde, mean, n_steps=500 if quick else MLP_STEPS)
    seconds = time.perf_counter() - start
    learned = bits(log_likelihood(score_fn, sde, (test - mean).float(), divergence="hutchinson",
                                  generator=torch.Generator().manual_seed(3)).double())
    diverged = int((learned > DIVERGED_BITS).sum())
    rows.append(row(SECTION, f"digits, MLP ({MLP_STEPS} steps): median test bits/dim",
                    learned.median().item(), unit="bits/dim",
                    note=f"Hutchinson, 1 probe; mean over the other test digits "
                         f"{learned[learned <= DIVERGED_BITS].mean().item():.3f}; "
                         f"trained in {seconds:.0f} s"))
    rows.append(row(SECTION, "digits, MLP: test digits whose flow diverges", diverged,
                    note=f"of {len(test)}; more than {DIVERGED_BITS:g} bits/dim"))
    return rows
