"""Tests of scorelab.sde (and the differentiable perturbed scores it relies on), against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from scorelab.densities import Banana, GaussianMixture, ncsn_toy_mixture
from scorelab.metrics import mode_weights
from scorelab.nets_continuous import SigmaConditionedMLP
from scorelab.noise import geometric_sigmas
from scorelab.scores import as_score_fn
from scorelab.sde import (VESDE, ContinuousDenoisingScoreMatching, ScoreCounter,
                          continuous_dsm_loss, corrector_step_size, euler_maruyama, log_likelihood,
                          predictor_corrector, probability_flow)


def _gaussian_score(variance: float):
    """Score of N(0, variance I) perturbed at sigma: -x / (variance + sigma^2)."""
    def score_fn(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        return -x / (variance + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)
    return score_fn


# --- densities: differentiable, with a sigma per point -----------------------------------------


@pytest.mark.parametrize("covariances", [[1.0, 0.5], [[1.0, 2.0], [0.5, 0.3]],
                                         [[[1.0, 0.3], [0.3, 2.0]], [[0.5, -0.1], [-0.1, 1.0]]]])
def test_perturbed_score_is_differentiable_and_takes_a_sigma_per_point(covariances):
    mixture = GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], covariances)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 50.0], dtype=torch.float64)
    expected_score = torch.stack([mixture.perturbed(float(s)).score(x[i:i + 1])[0]
                                  for i, s in enumerate(sigma)])
    expected_log = torch.stack([mixture.perturbed(float(s)).log_prob(x[i:i + 1])[0]
                                for i, s in enumerate(sigma)])
    torch.testing.assert_close(mixture.perturbed_score(x, sigma), expected_score)
    torch.testing.assert_close(mixture.perturbed_log_prob(x, sigma), expected_log)
    # autograd through the closed-form score: its Jacobian is the Hessian of the log-density
    x = x.requires_grad_(True)
    for level in (0.7, sigma):
        (row,) = torch.autograd.grad(mixture.perturbed_score(x, level)[:, 0].sum(), x)
        (grad,) = torch.autograd.grad(mixture.perturbed_log_prob(x, level).sum(), x, create_graph=True)
        (hessian_row,) = torch.autograd.grad(grad[:, 0].sum(), x)
        torch.testing.assert_close(row, hessian_row)


def test_banana_takes_a_sigma_per_point():
    banana = Banana()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 0.3, 2.0, 1.0], dtype=torch.float64)
    expected = torch.stack([banana.perturbed(float(s)).score(x[i:i + 1])[0] for i, s in enumerate(sigma)])
    torch.testing.assert_close(banana.perturbed_score(x, sigma), expected)
    torch.testing.assert_close(banana.perturbed_score(x, torch.full((5,), 0.3, dtype=torch.float64)),
                               banana.perturbed(0.3).score(x))


def test_perturbed_score_rejects_bad_sigmas():
    mixture = ncsn_toy_mixture()
    with pytest.raises(ValueError, match="sigma"):
        mixture.perturbed_score(torch.zeros(3, 2), torch.ones(4))
    with pytest.raises(ValueError, match="sigma"):
        mixture.perturbed_score(torch.zeros(3, 2), torch.tensor([1.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="sigma"):
        mixture.perturbed_score(torch.zeros(3, 2), 0.0)


# --- the SDE -----------------------------------------------------------------------------------


def test_vesde_sigma_diffusion_and_ladder():
    sde = VESDE(0.01, 50.0)
    assert sde.sigma(0.0) == pytest.approx(0.01) and sde.sigma(1.0) == pytest.approx(50.0)
    # g^2 is the derivative of sigma^2, checked by finite differences
    t, h = 0.37, 1e-6
    assert sde.g2(t) == pytest.approx((sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h), rel=1e-6)
    assert sde.diffusion(t) ** 2 == pytest.approx(sde.g2(t))
    assert sde.time_of(sde.sigma(0.3)) == pytest.approx(0.3)
    torch.testing.assert_close(sde.discretize(10), geometric_sigmas(50.0, 0.01, 10))
    times = sde.time_grid(10)
    assert times[0] == 1.0 and times[-1] == 0.0 and len(times) == 11
    x = sde.prior_sample((20_000, 2), generator=torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(50.0, rel=0.02)
    expected = torch.distributions.Normal(0.0, 50.0).log_prob(x).sum(1)
    torch.testing.assert_close(sde.prior_log_prob(x), expected)


@pytest.mark.parametrize("bad", [(1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (0.01, float("inf")),
                                 ("0.01", "50"), (True, 2.0), (None, 1.0),
                                 (1e-300, 1e300), (0.01, 1e160)])
def test_vesde_rejects_bad_noise_range(bad):
    with pytest.raises(ValueError, match="sigma_m"):
        VESDE(*bad)


def test_vesde_checks_its_times_and_noise_levels():
    sde = VESDE(0.01, 10.0)
    assert sde.sigma(0) == pytest.approx(0.01) and sde.sigma(1) == pytest.approx(10.0)
    times = torch.tensor([[0.0, 0.5], [1.0, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(sde.time_of(sde.sigma(times)), times)
    assert sde.time_of(sde.sigma(torch.tensor([]))).shape == (0,)
    for bad in (float("nan"), 2.0, -0.1, float("inf"), "0.5", None, 1000.0):
        for method in (sde.sigma, sde.g2, sde.diffusion):
            with pytest.raises(ValueError, match=r"t must be a (finite time in \[0, 1\]|real)"):
                method(bad)
    for bad in ([0.5, 1.5], [float("nan")], [-1.0]):
        with pytest.raises(ValueError, match=r"t must hold finite times in \[0, 1\]"):
            sde.sigma(torch.tensor(bad))
    with pytest.raises(ValueError, match="t must be a real tensor"):
        sde.g2(torch.tensor([True]))
    for bad in ([-1.0], [0.0], [float("inf")], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="sigma must hold positive finite noise levels"):
            sde.time_of(torch.tensor(bad))
    for bad in (float("nan"), 0.0, -1.0, "1.0"):
        with pytest.raises(ValueError, match="sigma must be a"):
            sde.time_of(bad)


def test_prior_sample_checks_its_dtype_and_takes_integer_like_sizes():
    import numpy as np

    sde = VESDE(0.01, 10.0)
    assert sde.prior_sample((np.int64(5), 2)).shape == (5, 2)
    assert sde.prior_sample((torch.tensor(3), np.int32(2), 1)).shape == (3, 2, 1)
    assert sde.prior_sample(torch.Size([4, 2]), dtype=torch.float64).dtype == torch.float64
    for bad in (torch.long, torch.bool, torch.complex64, "float", float):
        with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
            sde.prior_sample((4, 2), dtype=bad)
    for bad in (5, 5.0, (5,), (4, 2.0), (True, 2), (4, 0), "ab", None):
        with pytest.raises(ValueError, match=r"shape must be \(N, \*D\)"):
            sde.prior_sample(bad)


@pytest.mark.parametrize("sampler", ["em", "pc"])
def test_sde_samplers_reach_a_gaussian_target(sampler):
    """From the exact p_1 of N(0, v I), the samples at t = 0 must have variance v + sigma_min^2."""
    variance, sde = 2.0, VESDE(0.01, 20.0)
    generator = torch.Generator().manual_seed(3)
    x_T = math.sqrt(variance + 20.0**2) * torch.randn(20_000, 2, generator=generator, dtype=torch.float64)
    if sampler == "em":
        x = euler_maruyama(_gaussian_score(variance), sde, x_T, 400, generator=generator)
    else:
        x = predictor_corrector(_gaussian_score(variance), sde, x_T, 200, snr=0.1, generator=generator)
    assert x.var(0).mean().item() == pytest.approx(variance, rel=0.04)
    assert x.mean(0).abs().max().item() < 0.05


def test_probability_flow_is_the_exact_gaussian_map_and_inverts():
    """For N(0, v I) the flow is x_t = x_0 sqrt((v + sigma(t)^2) / (v + sigma_min^2))."""
    variance, sde = 1.5, VESDE(0.01, 50.0)
    x0 = torch.randn(50, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x1 = probability_flow(_gaussian_score(variance), sde, x0, direction="forward", rtol=1e-8, atol=1e-8)
    factor = math.sqrt((variance + 50.0**2) / (variance + 0.01**2))
    torch.testing.assert_close(x1, x0 * factor, rtol=1e-5, atol=1e-5)
    back, path = probability_flow(_gaussian_score(variance), sde, x1, rtol=1e-8, atol=1e-8,
                                  return_trajectory=True, n_frames=5)
    torch.testing.assert_close(back, x0, rtol=1e-5, atol=1e-5)
    assert path.shape == (5, 50, 3)
    torch.testing.assert_close(path[0], x1)


def test_exact_log_likelihood_matches_the_mixture():
    mixture, sde = ncsn_toy_mixture(), VESDE(0.01, 1000.0)
    x = mixture.sample(300, generator=torch.Generator().manual_seed(5)).double()
    exact = mixture.perturbed_log_prob(x, 0.01)
    counter = ScoreCounter(mixture.perturbed_score)
    got = log_likelihood(counter, sde, x)
    assert got.shape == (300,) and got.dtype == torch.float64
    assert (got - exact).abs().mean().item() < 0.01
    assert counter.calls > 10
    # with the true p_1 in place of the prior, what remains is the solver's error
    true_prior = log_likelihood(mixture.perturbed_score, sde, x,
                                prior_log_prob=lambda y: mixture.perturbed_log_prob(y, 1000.0))
    assert (true_prior - exact).abs().mean().item() < 1e-4


def test_prior_mismatch_at_sigma_max_50():
    mixture, sde = ncsn_toy_mixture(), VESDE(0.01, 50.0)
    x = mixture.sample(300, generator=torch.Generator().manual_seed(6)).double()
    error = (log_likelihood(mixture.perturbed_score, sde, x) - mixture.perturbed_log_prob(x, 0.01)).abs()
    assert 0.03 < error.mean().item() < 0.12


def test_hutchinson_is_unbiased_and_its_spread_falls_with_probes():
    mixture, sde = ncsn_toy_mixture(), VESDE(0.01, 1000.0)
    x = mixture.sample(200, generator=torch.Generator().manual_seed(7)).double()
    exact = log_likelihood(mixture.perturbed_score, sde, x)

    def errors(n_probes, seed):
        got = log_likelihood(mixture.perturbed_score, sde, x, divergence="hutchinson",
                             n_probes=n_probes, generator=torch.Generator().manual_seed(seed))
        return got - exact

    one = errors(1, 0)
    assert abs(one.mean().item()) < 0.1
    assert one.std().item() > 0.05  # one probe is noisy per point
    assert errors(16, 1).std().item() < 0.5 * one.std().item()
    gaussian = log_likelihood(mixture.perturbed_score, sde, x, divergence="hutchinson", probe="gaussian",
                              generator=torch.Generator().manual_seed(2))
    # Gaussian probes are unbiased too, but far noisier here: their variance has the diagonal's
    # share 2 sum_i J_ii^2, which Rademacher probes do not pay
    error = gaussian - exact
    assert abs(error.mean().item()) < 3 * error.std().item() / math.sqrt(len(error))
    assert error.std().item() > 3 * one.std().item()


def test_corrector_step_size_fixes_the_signal_to_noise_ratio():
    score = torch.randn(64, 5, generator=torch.Generator().manual_seed(8))
    noise = torch.randn(64, 5, generator=torch.Generator().manual_seed(9))
    alpha = corrector_step_size(score, noise, 0.2)
    drift = (0.5 * alpha * score).norm(dim=1).mean()
    spread = (math.sqrt(alpha) * noise).norm(dim=1).mean()
    assert (drift / spread).item() == pytest.approx(0.2, rel=1e-5)


def test_corrector_step_size_rejects_bad_input():
    score = torch.randn(8, 3, generator=torch.Generator().manual_seed(8))
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(9))
    for bad in (-0.1, 0.0, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="snr"):
            corrector_step_size(score, noise, bad)
    with pytest.raises(ValueError, match="noise must have the score's shape"):
        corrector_step_size(score, torch.randn(16, 3), 0.1)
    with pytest.raises(ValueError, match="noise must have the score's shape"):
        corrector_step_size(score, noise.reshape(8, 3, 1), 0.1)
    with pytest.raises(ValueError, match="score is zero everywhere, the corrector's step"):
        corrector_step_size(torch.zeros(8, 3), noise, 0.1)
    with pytest.raises(ValueError, match="score must contain only finite values"):
        corrector_step_size(score * float("nan"), noise, 0.1)
    with pytest.raises(ValueError, match="score must be a non-empty tensor"):
        corrector_step_size(score.tolist(), noise, 0.1)


def test_predictor_corrector_names_a_score_that_is_zero_everywhere():
    sde, x_T = VESDE(0.01, 10.0), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="score that score_fn returned at sigma = .* is zero "
                                         "everywhere, the corrector's step"):
        predictor_corrector(lambda x, s: torch.zeros_like(x), sde, x_T, 5, snr=0.1)
    # without a corrector, a zero score is a valid (if useless) model: the predictor runs
    x = predictor_corrector(lambda x, s: torch.zeros_like(x), sde, x_T, 5, snr=0.1, n_corrector=0)
    assert torch.isfinite(x).all()


def _limited(score_fn, limit=50):
    """``score_fn`` counting its calls, failing the test past ``limit`` (the solver's loop)."""
    def counted(x, sigma):
        counted.calls += 1
        assert counted.calls <= limit, "the ODE solver kept calling a non-finite score"
        return score_fn(x, sigma)
    counted.calls = 0
    return counted


def test_ode_raises_on_a_non_finite_score_instead_of_looping():
    """SciPy's solver shrinks its step forever (t becomes NaN) on NaN: the right-hand side raises."""
    sde, x = VESDE(0.01, 10.0), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    message = r"score_fn returned non-finite values \(NaN or infinity\) at t = 1, sigma = 10"
    for direction in ("backward", "forward"):
        nan = _limited(lambda y, s: torch.full_like(y, float("nan")))
        with pytest.raises(ValueError, match=message if direction == "backward" else "at t = 0,"):
            probability_flow(nan, sde, x, direction=direction)
        assert nan.calls == 1
    late = _limited(lambda y, s: -y / (1 + s**2) if s > 1.0 else y * float("inf"))
    with pytest.raises(ValueError, match="score_fn returned non-finite values"):
        probability_flow(late, sde, x)
    for divergence in ("exact", "hutchinson"):
        nan = _limited(lambda y, s: y * float("nan"))
        with pytest.raises(ValueError, match="score_fn returned non-finite values .* at t = 0,"):
            log_likelihood(nan, sde, x, divergence=divergence)
        assert nan.calls == 1
    # a finite score whose drift -g^2 s / 2 overflows float32
    huge = _limited(lambda y, s: torch.full_like(y, 3e38))
    with pytest.raises(ValueError, match="the drift .*NaN or infinite at t = 1: score_fn"):
        probability_flow(huge, sde, x)
    # a finite score whose derivative is NaN (the gradient of sqrt on the branch not taken)
    nan_grad = _limited(lambda y, s: torch.where(y > 1e9, torch.sqrt(y), -y / (1 + s**2)))
    with pytest.raises(ValueError, match="or its divergence, is NaN or infinite at t = 0"):
        log_likelihood(nan_grad, sde, x)


def test_log_likelihood_rejects_a_nan_prior():
    sde, x = VESDE(0.01, 10.0), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prior_log_prob returned NaN or \\+infinity"):
            log_likelihood(_gaussian_score(1.0), sde, x, rtol=1e-3, atol=1e-3,
                           prior_log_prob=lambda y, v=value: torch.full((4,), v))
    # -infinity is a log-density (of a density that is 0 there): it comes back as it is
    got = log_likelihood(_gaussian_score(1.0), sde, x, rtol=1e-3, atol=1e-3,
                         prior_log_prob=lambda y: torch.full((4,), -math.inf))
    assert (got == -math.inf).all()


def test_samplers_are_seeded_and_count_evaluations():
    mixture, sde = ncsn_toy_mixture(), VESDE(0.01, 50.0)
    x_T = sde.prior_sample((100, 2), generator=torch.Generator().manual_seed(10))
    counter = ScoreCounter(mixture.perturbed_score)
    a = predictor_corrector(counter, sde, x_T, 20, snr=0.16, n_corrector=2,
                            generator=torch.Generator().manual_seed(1))
    assert counter.calls == 20 * 3
    b = predictor_corrector(mixture.perturbed_score, sde, x_T, 20, snr=0.16, n_corrector=2,
                            generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    x, path = euler_maruyama(mixture.perturbed_score, sde, x_T, 20, generator=torch.Generator().manual_seed(1),
                             return_trajectory=True, record_every=5)
    assert path.shape == (5, 100, 2)
    torch.testing.assert_close(path[-1], x)


def test_samplers_recover_the_mixture_weight_from_the_true_p1():
    mixture, sde = ncsn_toy_mixture(), VESDE(0.01, 50.0)
    generator = torch.Generator().manual_seed(11)
    x_T = mixture.perturbed(50.0).sample(4_000, generator=generator).double()
    for x in (euler_maruyama(mixture.perturbed_score, sde, x_T, 200, generator=generator),
              predictor_corrector(mixture.perturbed_score, sde, x_T, 100, snr=0.16, generator=generator),
              probability_flow(mixture.perturbed_score, sde, x_T)):
        assert abs(mode_weights(x, mixture.means.double())[0].item() - 0.8) < 0.03


# --- errors --------------------------------------------------------------------------------------


def test_clear_errors():
    mixture, sde = ncsn_toy_mixture(), VESDE(0.01, 50.0)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="snr"):
        predictor_corrector(mixture.perturbed_score, sde, x, 5, snr=0.0)
    with pytest.raises(ValueError, match="snr"):
        predictor_corrector(mixture.perturbed_score, sde, x, 5, snr=-0.1)
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(mixture.perturbed_score, sde, x, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(mixture.perturbed_score, sde, x, divergence="trace")
    with pytest.raises(ValueError, match="score_fn must return a tensor of the input's shape"):
        euler_maruyama(lambda y, s: y[:, :1], sde, x, 5)
    with pytest.raises(ValueError, match="score_fn must return a tensor of the input's shape"):
        probability_flow(lambda y, s: y.sum(1), sde, x)
    with pytest.raises(ValueError, match="score_fn must be differentiable"):
        log_likelihood(lambda y, s: y.detach() * 0 - 1.0, sde, x)
    with pytest.raises(ValueError, match="sde must be a VESDE"):
        euler_maruyama(mixture.perturbed_score, "ve", x, 5)
    with pytest.raises(ValueError, match="n_steps"):
        euler_maruyama(mixture.perturbed_score, sde, x, 0)
    with pytest.raises(ValueError, match="x_T"):
        euler_maruyama(mixture.perturbed_score, sde, torch.zeros(4), 5)
    with pytest.raises(ValueError, match="direction"):
        probability_flow(mixture.perturbed_score, sde, x, direction="up")
    with pytest.raises(ValueError, match="diverged"):
        euler_maruyama(lambda y, s: y * float("nan"), sde, x, 5)


@pytest.mark.parametrize("sampler, options", [(euler_maruyama, {}),
                                               (predictor_corrector, {"snr": 0.16})])
def test_blow_up_between_checks_is_reported_as_divergence_not_as_the_densitys_input_error(
    sampler, options
):
    """The samplers check finiteness every 25 steps; a score that refuses non-finite points
    (the package's densities do) in between must still give the divergence, with its step."""
    mixture, sde = ncsn_toy_mixture(), VESDE(0.01, 50.0)
    x = sde.prior_sample((100, 2), generator=torch.Generator().manual_seed(0))

    def too_large(y, sigma):  # 100 times the true score: the chain overflows within 25 steps
        return 100.0 * mixture.perturbed_score(y, sigma)

    with pytest.raises(ValueError, match=rf"^{sampler.__name__} diverged: .* by step \d+; "
                       "use more steps") as caught:
        sampler(too_large, sde, x, 100, generator=torch.Generator().manual_seed(0), **options)
    assert "finite values" in str(caught.value.__cause__)  # the density's own error, chained
    step = int(str(caught.value).split("by step ")[1].split(";")[0])
    assert step % 25 != 0  # between two checks, where the density's error arrives first


# --- continuous-sigma denoising score matching ------------------------------------------------


def test_continuous_dsm_loss_is_minimised_by_the_true_score():
    """For Gaussian data the perturbed score is known at every sigma: it beats a wrong one."""
    variance, sde = 2.0, VESDE(0.01, 20.0)
    x = math.sqrt(variance) * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(12))

    def true(y, sigma):
        return -y / (variance + sigma[:, None] ** 2)

    def wrong(y, sigma):
        return -y / (1.0 + sigma[:, None] ** 2)

    loss_true = continuous_dsm_loss(true, x, sde, generator=torch.Generator().manual_seed(1))
    loss_wrong = continuous_dsm_loss(wrong, x, sde, generator=torch.Generator().manual_seed(1))
    assert loss_true.shape == (20_000,)
    assert loss_true.mean() < loss_wrong.mean() - 0.01
    with pytest.raises(ValueError, match="model must return"):
        continuous_dsm_loss(lambda y, s: y[:, :1], x[:8], sde)


def test_sigma_conditioned_mlp_trains_and_follows_the_contract():
    torch.manual_seed(0)
    net = SigmaConditionedMLP(2, (32, 32))
    x = torch.randn(5, 2)
    assert net(x, torch.ones(5)).shape == (5, 2)
    with pytest.raises(ValueError, match="sigma must be a tensor of shape"):
        net(x, 1.0)
    with pytest.raises(ValueError, match="x must be a tensor of shape"):
        net(torch.randn(5, 3), torch.ones(5))
    score_fn = as_score_fn(net)
    assert score_fn(x, 0.5).shape == (5, 2)
    # an untrained network is the score of N(0, (1 + sigma^2) I) plus a bounded correction
    sde = VESDE(0.01, 10.0)
    data = 1.5 * torch.randn(4_000, 2, generator=torch.Generator().manual_seed(13))
    trainer = ContinuousDenoisingScoreMatching(net, sde, lr=3e-3)
    history = trainer.train(data, n_steps=300, batch_size=256, generator=torch.Generator().manual_seed(1),
                            progress=False)
    assert sum(history[-50:]) / 50 < sum(history[:50]) / 50
    probe = 1.5 * torch.randn(2_000, 2, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        learned = score_fn(probe, 1.0)
    expected = -probe / (2.25 + 1.0)
    assert ((learned - expected).square().sum(1).mean() / expected.square().sum(1).mean()).item() < 0.1


def test_ode_gives_a_gaussian_s_bits_per_dim_on_the_digits():
    """64 dimensions: a Gaussian fitted to the digits has closed-form scores at every level,
    and the ODE with the exact divergence must give back its bits per dimension."""
    from scorelab.bench.sde import digits_gaussian, digits_split
    from scorelab.metrics import bits_per_dim

    train, test = digits_split()
    assert train.shape == (1257, 64) and test.shape == (540, 64)
    assert 0 < train.min() and train.max() < 1  # dequantised
    gaussian, sde = digits_gaussian(train), VESDE(0.03, 10.0)
    x = test[:20]
    ode = log_likelihood(gaussian.perturbed_score, sde, x,
                         prior_log_prob=lambda y: gaussian.perturbed_log_prob(y, 10.0))
    exact = gaussian.perturbed_log_prob(x, 0.03)
    bits = bits_per_dim(ode, 64, n_levels=17)
    assert (bits - bits_per_dim(exact, 64, n_levels=17)).abs().max() < 0.005
    assert 2.5 < bits_per_dim(gaussian.log_prob(test), 64, n_levels=17).mean() < math.log2(17)
