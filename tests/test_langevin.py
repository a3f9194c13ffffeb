"""Tests of scorelab.langevin: stationary moments, MALA's exactness, annealing, errors."""

from __future__ import annotations

import math

import pytest
import torch

from scorelab.densities import GaussianMixture, ncsn_toy_mixture
from scorelab.langevin import annealed_langevin_dynamics, langevin_dynamics, mala
from scorelab.noise import geometric_sigmas

# A 2-D Gaussian N(0, diag(1, 2)): its score is -x / variances.
VARIANCES = torch.tensor([1.0, 2.0])
N_PARTICLES = 20_000


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


def _gaussian_score(x: torch.Tensor) -> torch.Tensor:
    return -x / VARIANCES


def _gaussian_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x.square() / VARIANCES).sum(1)


def _weight_of_upper_mode(x: torch.Tensor) -> float:
    """Share of particles closer to (5, 5) than to (-5, -5)."""
    return (x.sum(1) > 0).float().mean().item()


def test_ula_stationary_moments_carry_the_step_size_bias():
    """For N(0, s^2), x' = (1 - a / (2 s^2)) x + sqrt(a) z has stationary variance s^2 / (1 - a / (4 s^2))."""
    step_size = 0.5
    generator = torch.Generator().manual_seed(0)
    x = langevin_dynamics(_gaussian_score, torch.zeros(N_PARTICLES, 2), step_size, 150,
                          generator=generator, progress=False)
    biased = VARIANCES / (1 - step_size / (4 * VARIANCES))  # (1.143, 2.133)
    # Standard errors of the sample mean and variance of N independent Gaussian particles.
    assert (x.mean(0).abs() < 4 * (biased / N_PARTICLES).sqrt()).all()
    variance_error = biased * math.sqrt(2 / N_PARTICLES)
    assert ((x.var(0) - biased).abs() < 4 * variance_error).all()
    assert ((x.var(0) - VARIANCES).abs() > 4 * variance_error).all()  # the bias is visible
    assert abs(torch.cov(x.T)[0, 1]) < 4 * (biased.prod() / N_PARTICLES).sqrt()


def test_mala_removes_the_bias_and_reports_acceptance():
    step_size = 0.5
    generator = torch.Generator().manual_seed(1)
    x, acceptance_rate = mala(_gaussian_log_prob, _gaussian_score, torch.zeros(N_PARTICLES, 2), step_size, 150,
                              generator=generator, progress=False)
    variance_error = VARIANCES * math.sqrt(2 / N_PARTICLES)
    assert ((x.var(0) - VARIANCES).abs() < 4 * variance_error).all()
    assert (x.mean(0).abs() < 4 * (VARIANCES / N_PARTICLES).sqrt()).all()
    assert 0.5 < acceptance_rate < 1.0


def test_mala_rejects_everything_at_a_huge_step():
    x0 = torch.zeros(100, 2)
    x, acceptance_rate = mala(_gaussian_log_prob, _gaussian_score, x0, 1e4, 20,
                              generator=torch.Generator().manual_seed(2), progress=False)
    assert acceptance_rate < 0.05
    assert torch.isfinite(x).all()


def test_annealed_langevin_recovers_mixture_weights_where_plain_langevin_fails():
    """Song & Ermon (2019), Fig. 3: the 0.8 / 0.2 mixture from uniform starts on [-8, 8]^2."""
    mixture = ncsn_toy_mixture()
    generator = torch.Generator().manual_seed(0)
    x0 = 16 * torch.rand(10_000, 2, generator=generator) - 8
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    annealed = annealed_langevin_dynamics(mixture.perturbed_score, x0, sigmas, 0.1, 300,
                                          generator=generator, progress=False)
    plain = langevin_dynamics(mixture.score, x0[:2000], 0.1, 3000, generator=generator, progress=False)
    # 0.025 covers the annealing lag at 300 steps a level (about 0.006) and the sampling error (0.004).
    assert abs(_weight_of_upper_mode(annealed) - 0.8) < 0.025
    assert abs(_weight_of_upper_mode(plain) - 0.5) < 0.05


def test_geometric_sigmas():
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    assert sigmas.shape == (10,)
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([20.0, 1.0]))
    ratios = sigmas[:-1] / sigmas[1:]
    torch.testing.assert_close(ratios, torch.full((9,), 20.0 ** (1 / 9)))
    torch.testing.assert_close(geometric_sigmas(3.0, 1.0, 1), torch.tensor([3.0]))


def test_trajectories_and_reproducibility():
    x0 = torch.zeros(7, 2)
    x, trajectory = langevin_dynamics(_gaussian_score, x0, 0.1, 10, generator=torch.Generator().manual_seed(3),
                                      return_trajectory=True, record_every=3, progress=False)
    assert trajectory.shape == (4, 7, 2)  # x0 and steps 3, 6, 9
    assert torch.equal(trajectory[0], x0) and torch.all(x0 == 0)
    again = langevin_dynamics(_gaussian_score, x0, 0.1, 9, generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.equal(trajectory[-1], again)
    sigmas = [3.0, 2.0, 1.0]
    x, trajectory = annealed_langevin_dynamics(lambda x, sigma: -x / (1 + sigma**2), x0, sigmas, 0.1, 4,
                                               return_trajectory=True, record_every=2, progress=False)
    assert trajectory.shape == (7, 7, 2)
    assert torch.equal(trajectory[-1], x)
    x, rate, trajectory = mala(_gaussian_log_prob, _gaussian_score, x0, 0.1, 5, return_trajectory=True, progress=False)
    assert trajectory.shape == (6, 7, 2) and torch.equal(trajectory[-1], x)


def test_image_shaped_particles():
    x0 = torch.zeros(5, 1, 4, 4)
    x = langevin_dynamics(lambda x: -x, x0, 0.1, 3, progress=False)
    assert x.shape == (5, 1, 4, 4)
    x = annealed_langevin_dynamics(lambda x, sigma: -x / (1 + sigma**2), x0, [2.0, 1.0], 0.1, 3,
                                   denoise=True, progress=False)
    assert x.shape == (5, 1, 4, 4)
    # MALA on images is MALA on the flattened points: the same draws give the same chain.
    x0 = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    x, rate = mala(lambda x: -0.5 * x.square().sum((1, 2, 3)), lambda x: -x, x0, 0.5, 20,
                   generator=torch.Generator().manual_seed(2), progress=False)
    flat, flat_rate = mala(lambda x: -0.5 * x.square().sum(1), lambda x: -x, x0.reshape(5, 16), 0.5,
                           20, generator=torch.Generator().manual_seed(2), progress=False)
    assert x.shape == (5, 1, 4, 4) and torch.equal(x.reshape(5, 16), flat)
    assert rate == flat_rate and 0.0 < rate < 1.0  # some proposals rejected, some accepted


def test_denoise_adds_sigma_squared_times_the_last_score():
    """Tweedie's formula: the final step is x + sigma_L^2 s(x, sigma_L)."""
    mixture = GaussianMixture([1.0], [[2.0, -1.0]], [0.5])
    sigmas = [2.0, 0.5]
    x0 = torch.zeros(100, 2)
    noisy = annealed_langevin_dynamics(mixture.perturbed_score, x0, sigmas, 0.05, 20,
                                       generator=torch.Generator().manual_seed(4), progress=False)
    denoised = annealed_langevin_dynamics(mixture.perturbed_score, x0, sigmas, 0.05, 20,
                                          generator=torch.Generator().manual_seed(4), progress=False, denoise=True)
    torch.testing.assert_close(denoised, noisy + 0.25 * mixture.perturbed(0.5).score(noisy))


def test_blow_up_names_the_step_and_suggests_a_smaller_step_size():
    with pytest.raises(ValueError, match=r"step 25 .*smaller step_size"):
        langevin_dynamics(lambda x: 1e6 * x, torch.ones(5, 2), 1.0, 200, progress=False)
    with pytest.raises(ValueError, match=r"step 10 .*smaller step_size"):
        langevin_dynamics(lambda x: 1e6 * x, torch.ones(5, 2), 1.0, 200, check_every=10, progress=False)
    with pytest.raises(ValueError, match=r"sigma=1\) .*step \d+ .*smaller step_size"):
        annealed_langevin_dynamics(lambda x, sigma: 1e6 * x, torch.ones(5, 2), [1.0], 1.0, 200, progress=False)
    with pytest.raises(ValueError, match=r"step 8 .*smaller step_size"):
        langevin_dynamics(lambda x: 1e6 * x, torch.ones(5, 2), 1.0, 8, progress=False)  # the final check


def test_blow_up_between_checks_is_reported_as_divergence_not_as_the_densitys_input_error():
    """The package's densities refuse non-finite points; a chain that overflows between two
    finiteness checks must still say that it diverged, at which step, and what to do."""
    from scorelab.densities import ncsn_toy_mixture

    mixture, x0 = ncsn_toy_mixture(), torch.zeros(100, 2)
    with pytest.raises(ValueError, match=r"^Langevin dynamics diverged: .* by step \d+ "
                       r"\(step size 5\); try a smaller step_size") as caught:
        langevin_dynamics(mixture.score, x0, 5.0, 200, generator=torch.Generator().manual_seed(0),
                          progress=False)
    assert "finite values" in str(caught.value.__cause__)  # the density's own error, chained
    with pytest.raises(ValueError, match=r"^Annealed Langevin dynamics \(level sigma=.*\) "
                       "diverged: .*smaller step_size"):
        annealed_langevin_dynamics(mixture.perturbed_score, x0, [20.0, 5.0, 1.0], 5.0, 100,
                                   generator=torch.Generator().manual_seed(0), progress=False)


def test_mala_reports_proposals_that_overflow_where_the_density_refuses_them():
    """A proposal at infinity is rejected when the density returns -inf there; the package's
    densities raise on it instead, and MALA must then name the cause and the cure."""
    from scorelab.densities import ncsn_toy_mixture

    mixture = ncsn_toy_mixture()
    with pytest.raises(ValueError, match=r"^MALA's proposals overflowed .* at step 1 "
                       r"\(step size 1e\+39\).*smaller step_size") as caught:
        mala(mixture.log_prob, mixture.score, torch.randn(10, 2), 1e39, 5, progress=False)
    assert "finite values" in str(caught.value.__cause__)  # the density's own error, chained


def test_a_score_function_error_on_finite_particles_is_not_hidden():
    def broken(x):
        raise RuntimeError("the score function's own bug")

    with pytest.raises(RuntimeError, match="the score function's own bug"):
        langevin_dynamics(broken, torch.zeros(3, 2), 0.1, 5, progress=False)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: langevin_dynamics(_gaussian_score, torch.zeros(3, 2), 0.0, 5), "step_size must be a positive"),
        (lambda: langevin_dynamics(_gaussian_score, torch.zeros(3, 2), -1.0, 5), "step_size must be a positive"),
        (lambda: langevin_dynamics(_gaussian_score, torch.zeros(3, 2), 0.1, 0), "n_steps must be a positive integer"),
        (lambda: langevin_dynamics(_gaussian_score, torch.zeros(3, 2), 0.1, 2.5), "n_steps must be a positive integer"),
        (lambda: langevin_dynamics(_gaussian_score, torch.zeros(2), 0.1, 5), r"x0 must be a non-empty tensor of shape \(N, \*D\)"),
        (lambda: langevin_dynamics(_gaussian_score, torch.zeros(3, 2, dtype=torch.long), 0.1, 5), "x0 must be a floating"),
        (lambda: langevin_dynamics(lambda x: x[:, 0], torch.zeros(3, 2), 0.1, 5), r"score_fn must return .* \(3, 2\)"),
        (lambda: langevin_dynamics(_gaussian_score, torch.zeros(3, 2), 0.1, 5, record_every=0,
                                   return_trajectory=True), "record_every must be a positive integer"),
        (lambda: annealed_langevin_dynamics(lambda x, s: -x, torch.zeros(3, 2), [1.0, 2.0], 0.1, 5),
         "sigmas must be strictly decreasing"),
        (lambda: annealed_langevin_dynamics(lambda x, s: -x, torch.zeros(3, 2), [2.0, 0.0], 0.1, 5),
         "sigmas must be positive"),
        (lambda: annealed_langevin_dynamics(lambda x, s: -x, torch.zeros(3, 2), [], 0.1, 5), "sigmas must hold"),
        (lambda: annealed_langevin_dynamics(lambda x, s: -x, torch.zeros(3, 2), [2.0, 1.0], 0.1, 0),
         "n_steps_each must be a positive integer"),
        (lambda: annealed_langevin_dynamics(lambda x, s: -x, torch.zeros(3, 2), [2.0, 1.0], 0.0, 5),
         "step_size must be a positive"),
        (lambda: annealed_langevin_dynamics(lambda x, s: -x[:1], torch.zeros(3, 2), [2.0, 1.0], 0.1, 5),
         "score_fn must return"),
        (lambda: annealed_langevin_dynamics(ncsn_toy_mixture().perturbed_score, torch.zeros(3, 3), [2.0, 1.0], 0.1, 5),
         r"x must have shape \(N, 2\)"),
        (lambda: mala(_gaussian_log_prob, _gaussian_score, torch.zeros(3, 2), 0.0, 5), "step_size must be a positive"),
        (lambda: mala(lambda x: x, _gaussian_score, torch.zeros(3, 2), 0.1, 5), r"log_prob_fn must return .* \(3,\)"),
        (lambda: mala(lambda x: torch.full((3,), float("nan")), _gaussian_score, torch.zeros(3, 2), 0.1, 5),
         "log_prob_fn returned NaN"),
        (lambda: mala(lambda x: torch.zeros(3, dtype=torch.long), _gaussian_score, torch.zeros(3, 2), 0.1, 5),
         "log_prob_fn must return a floating"),
        (lambda: mala(None, _gaussian_score, torch.zeros(3, 2), 0.1, 5), "log_prob_fn must be a callable"),
        (lambda: langevin_dynamics(None, torch.zeros(3, 2), 0.1, 5), "score_fn must be a callable"),
        (lambda: annealed_langevin_dynamics("s", torch.zeros(3, 2), [2.0, 1.0], 0.1, 5), "score_fn must be a callable"),
        (lambda: geometric_sigmas(1.0, 2.0, 5), "sigma_min must be smaller than sigma_max"),
        (lambda: geometric_sigmas(0.0, 1.0, 5), "sigma_max must be a positive"),
        (lambda: geometric_sigmas(2.0, 1.0, 0), "n_levels must be a positive integer"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _score_that_breaks_after(n_calls):
    """-x for the first ``n_calls`` calls, then an (N, 1) tensor: a bug x.add_ would broadcast."""
    calls = []

    def score_fn(x, sigma):
        calls.append(sigma)
        return -x if len(calls) <= n_calls else -x[:, :1]

    return score_fn


@pytest.mark.parametrize("denoise, n_calls", [(False, 5), (True, 10)], ids=["second level", "denoise"])
def test_a_score_whose_shape_changes_later_is_caught_not_broadcast(denoise, n_calls):
    # 2 levels x 5 steps: call 6 opens the second level, call 11 is the denoising step.
    with pytest.raises(ValueError, match=r"score_fn must return .* \(3, 2\), got \(3, 1\)"):
        annealed_langevin_dynamics(_score_that_breaks_after(n_calls), torch.zeros(3, 2), [2.0, 1.0],
                                   0.1, 5, denoise=denoise, progress=False)
