"""Metrics: Fisher divergence, mode weights, MMD, energy distance and the digits quality figures."""

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from scorelab import metrics
from scorelab.data import load_digits
from scorelab.densities import GaussianMixture


def gaussian_score(x):
    return -x


def test_fisher_divergence_of_known_score_errors():
    x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
    assert metrics.fisher_divergence(gaussian_score, gaussian_score, x) == 0.0
    # A doubled score errs by exactly the true score: the relative divergence is 1.
    absolute = metrics.fisher_divergence(lambda p: -2 * p, gaussian_score, x)
    assert absolute == pytest.approx(float((x**2).sum(1).mean()), rel=1e-5)
    doubled = metrics.fisher_divergence(lambda p: -2 * p, gaussian_score, x, relative=True)
    zero = metrics.fisher_divergence(torch.zeros_like, gaussian_score, x, relative=True)
    assert doubled == pytest.approx(1.0) and zero == pytest.approx(1.0)
    # Batching does not change the figure.
    small_batches = metrics.fisher_divergence(lambda p: -2 * p, gaussian_score, x, batch_size=7)
    assert small_batches == pytest.approx(absolute, rel=1e-5)


def test_fisher_divergence_refuses_bad_input():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="score_fn must return"):
        metrics.fisher_divergence(lambda p: p[:, :1], gaussian_score, x)
    with pytest.raises(ValueError, match="x must be a non-empty"):
        metrics.fisher_divergence(gaussian_score, gaussian_score, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="true score that is not zero"):
        metrics.fisher_divergence(gaussian_score, torch.zeros_like, x, relative=True)


def test_mode_weights_count_the_nearest_centre():
    centers = torch.tensor([[5.0, 5.0], [-5.0, -5.0]])
    x = torch.tensor([[4.0, 6.0], [1.0, 0.5], [-3.0, -9.0], [0.2, 0.1]])
    torch.testing.assert_close(metrics.mode_weights(x, centers), torch.tensor([0.75, 0.25]))
    mixture = GaussianMixture(torch.tensor([0.8, 0.2]), centers, torch.tensor([1.0, 1.0]))
    samples = mixture.sample(20_000, generator=torch.Generator().manual_seed(0))
    weights = metrics.mode_weights(samples, centers)
    assert abs(float(weights[0]) - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 20_000)
    with pytest.raises(ValueError, match="centers"):
        metrics.mode_weights(x, torch.zeros(2, 3))


def test_mmd_and_energy_distance_equal_explicit_sums():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 2, generator=generator), torch.randn(4, 2, generator=generator) + 1
    a, b, h = x.double().numpy(), y.double().numpy(), 0.9

    def mean_pairs(p, q, f, skip_diagonal):
        values = [f(np.linalg.norm(u - v)) for i, u in enumerate(p) for j, v in enumerate(q)
                  if not (skip_diagonal and i == j)]
        return np.mean(values)

    def k(d):
        return np.exp(-d**2 / (2 * h**2))

    expected_mmd = (mean_pairs(a, a, k, True) + mean_pairs(b, b, k, True)
                    - 2 * mean_pairs(a, b, k, False))
    assert metrics.mmd(x, y, bandwidth=h) == pytest.approx(expected_mmd, abs=1e-6)
    expected_energy = (2 * mean_pairs(a, b, abs, False) - mean_pairs(a, a, abs, True)
                       - mean_pairs(b, b, abs, True))
    assert metrics.energy_distance(x, y) == pytest.approx(expected_energy, abs=1e-5)
    pooled = np.concatenate([a, b])
    distances = [np.linalg.norm(u - v) for i, u in enumerate(pooled) for v in pooled[i + 1:]]
    # torch's median of an even count is the lower middle value.
    lower_median = sorted(distances)[(len(distances) - 1) // 2]
    assert metrics.median_bandwidth(x, y) == pytest.approx(lower_median, rel=1e-5)


def test_mmd_and_energy_distance_separate_distributions():
    generator = torch.Generator().manual_seed(1)
    x, same = torch.randn(500, 2, generator=generator), torch.randn(500, 2, generator=generator)
    shifted = torch.randn(500, 2, generator=generator) + torch.tensor([1.0, 0.0])
    # Same distribution: U-statistics fluctuate around zero with standard error about 1/n.
    assert abs(metrics.mmd(x, same)) < 0.01 and abs(metrics.energy_distance(x, same)) < 0.03
    assert metrics.mmd(x, shifted) > 0.1 and metrics.energy_distance(x, shifted) > 0.3
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.mmd(x[:1], same)
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.mmd(x, same, bandwidth=0.0)


def test_frechet_distance_of_an_affine_copy():
    # b = 2 a + 1: mean gap mean_a + 1 and covariance 4 C, so the trace term is
    # tr(C + 4C - 2 * 2C) = tr(C).
    a = np.random.default_rng(0).normal(size=(300, 4)) @ np.diag([1.0, 2.0, 0.5, 1.5])
    b = 2 * a + 1
    gap = a.mean(0) + 1
    expected = gap @ gap + np.trace(np.cov(a, rowvar=False))
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def digits():
    train = load_digits("train", return_labels=True)
    test = load_digits("test", return_labels=True)
    return train, test, metrics.digits_classifier(*train)


def test_digits_classifier_is_accurate_and_confident_only_on_digits(digits):
    _, (test_images, test_labels), classifier = digits
    predicted = classifier.predict(test_images.reshape(-1, 64).numpy())
    assert (predicted == test_labels.numpy()).mean() > 0.95
    assert metrics.classifier_confidence(classifier, test_images) > 0.6
    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert metrics.classifier_confidence(classifier, noise) < 0.15
    shares = metrics.class_coverage(classifier, test_images)
    assert shares.shape == (10,) and shares.sum() == pytest.approx(1.0) and shares.min() > 0.08
    only_zeros = test_images[test_labels == 0]
    assert metrics.class_coverage(classifier, only_zeros)[0] > 0.95


def test_pca_frechet_distance_reproduces_its_calibration(digits):
    (train_images, _), (test_images, test_labels), _ = digits
    real = metrics.pca_frechet_distance(test_images, train_images, train_images)
    blurred = scipy.ndimage.gaussian_filter(test_images.numpy(), sigma=(0, 0, 0.6, 0.6))
    blurred_distance = metrics.pca_frechet_distance(blurred, train_images, train_images)
    half = metrics.pca_frechet_distance(test_images[test_labels >= 5], train_images, train_images)
    assert real < 0.1
    assert 0.5 < blurred_distance < 1.0 and 0.4 < half < 0.8


def test_digit_metrics_refuse_bad_images(digits):
    classifier = digits[2]
    with pytest.raises(ValueError, match="samples must hold 8x8 images"):
        metrics.classifier_confidence(classifier, torch.zeros(3, 7, 7))
    with pytest.raises(ValueError, match="samples must hold finite"):
        metrics.class_coverage(classifier, torch.full((3, 64), float("nan")))
    with pytest.raises(ValueError, match="threshold"):
        metrics.classifier_confidence(classifier, torch.zeros(3, 64), threshold=1.5)
    with pytest.raises(ValueError, match="labels must be given"):
        metrics.digits_classifier(torch.zeros(3, 64))
    with pytest.raises(ValueError, match=r"\[0, 1\] scale, got values from 0 to 255 .*by 255"):
        metrics.classifier_confidence(classifier, torch.linspace(0, 255, 64).expand(3, 64))
    with pytest.raises(ValueError, match="samples must hold 8x8 images"):
        metrics.class_coverage(classifier, torch.zeros(3, 2, 32))  # 64 pixels, not an image
    with pytest.raises(ValueError, match="samples must hold at least one image"):
        metrics.classifier_confidence(classifier, torch.zeros(0, 64))
    with pytest.raises(ValueError, match="threshold must be a number"):
        metrics.classifier_confidence(classifier, torch.zeros(3, 64), threshold="a")
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        metrics.pca_frechet_distance(torch.zeros(3, 64), torch.zeros(3, 64), n_components=0)


def test_metrics_refuse_what_would_make_them_nan():
    with pytest.raises(ValueError, match="score_fn returned NaN"):
        metrics.fisher_divergence(lambda x: x * float("nan"), gaussian_score, torch.ones(4, 2))
    with pytest.raises(ValueError, match="true_score_fn must be a callable"):
        metrics.fisher_divergence(gaussian_score, None, torch.ones(4, 2))
    with pytest.raises(ValueError, match="a and b must hold finite values"):
        metrics.frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="at least one row each"):
        metrics.mode_weights(torch.zeros(3, 2), torch.zeros(0, 2))


def test_mmd_of_collapsed_samples_is_a_number():
    # All points equal: the median bandwidth is ~0 and 2 h^2 underflows in float32.
    assert metrics.mmd(torch.zeros(3, 2), torch.zeros(3, 2)) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(metrics.mmd(torch.zeros(3, 2), torch.ones(3, 2), bandwidth=1e-30))


def test_frechet_distance_takes_tensors_and_one_feature():
    a, b = torch.tensor([[0.0], [2.0]]), np.array([[1.0], [3.0]])  # variances 2 and 2, means 1 apart
    assert metrics.frechet_distance(a, b) == pytest.approx(1.0)


# ---------------------------------------------------------------- bits per dimension


def test_bits_per_dim_of_known_densities():
    # the uniform density on [0, 1]^64 (log p = 0): log2 K for K grey levels
    assert torch.allclose(metrics.bits_per_dim(torch.zeros(3), 64, n_levels=17),
                          torch.full((3,), math.log2(17)))
    # a density of 2^-D everywhere is one bit per dimension; -inf (no mass) is infinitely many
    got = metrics.bits_per_dim(torch.tensor([-64 * math.log(2), -math.inf]), 64)
    assert got[0].item() == pytest.approx(1.0) and math.isinf(got[1].item())


def test_bits_per_dim_bounds_the_discrete_probability():
    """The dequantised density of a known discrete law: the bound is its exact codelength."""
    probabilities = torch.tensor([0.5, 0.25, 0.25])  # 3 levels, one dimension
    levels = torch.arange(3)
    # piecewise-constant density on [0, 1]: probability / width 1/3 on each level's cell
    log_density = torch.log(probabilities[levels] * 3)
    bits = metrics.bits_per_dim(log_density, 1, n_levels=3)
    assert torch.allclose(bits, -torch.log2(probabilities))


@pytest.mark.parametrize("arguments, message", [
    ((torch.zeros(2, 2), 64), "shape \\(N,\\)"),
    (([0.0], 64), "got list"),
    ((torch.zeros(2, dtype=torch.long), 64), "floating-point"),
    ((torch.tensor([math.nan]), 64), "NaN"),
    ((torch.zeros(2), 0), "n_dims"),
])
def test_bits_per_dim_rejects_bad_input(arguments, message):
    with pytest.raises(ValueError, match=message):
        metrics.bits_per_dim(*arguments)


@pytest.mark.parametrize("n_levels", [1, 2.5, True])
def test_bits_per_dim_rejects_bad_levels(n_levels):
    with pytest.raises(ValueError, match="n_levels"):
        metrics.bits_per_dim(torch.zeros(2), 64, n_levels=n_levels)
