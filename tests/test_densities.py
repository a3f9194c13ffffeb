"""Tests of scorelab.densities against autograd, convolution integrals and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorelab.densities import Banana, GaussianMixture, ncsn_toy_mixture


def _autograd_score(log_prob_fn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob_fn(x).sum(), x)
    return grad


def _mixtures() -> dict[str, GaussianMixture]:
    weights = [0.2, 0.5, 0.3]
    means = [[0.0, 1.0, -1.0], [2.0, -1.0, 0.5], [-3.0, 0.0, 2.0]]
    full = torch.tensor([[[1.0, 0.3, 0.0], [0.3, 2.0, -0.4], [0.0, -0.4, 0.7]],
                         [[0.5, -0.1, 0.1], [-0.1, 1.0, 0.0], [0.1, 0.0, 1.5]],
                         [[2.0, 0.9, 0.2], [0.9, 1.0, 0.1], [0.2, 0.1, 0.4]]])
    return {
        "isotropic": GaussianMixture(weights, means, [1.0, 0.4, 2.5]),
        "diagonal": GaussianMixture(weights, means, [[1.0, 0.5, 2.0], [0.3, 1.2, 0.8], [2.0, 2.0, 0.5]]),
        "full": GaussianMixture(weights, means, full),
    }


def _banana_targets() -> dict[str, object]:
    banana = Banana()
    return {"banana": banana, "banana sigma=0.5": banana.perturbed(0.5),
            "banana sigma=2": banana.perturbed(2.0), "haario banana": Banana(curvature=0.03, scale=10.0)}


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "full"])
def test_mixture_score_equals_autograd(kind):
    mixture = _mixtures()[kind]
    assert mixture.kind == kind
    x = 3.0 * torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = _autograd_score(mixture.log_prob, x)
    torch.testing.assert_close(mixture.score(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixture.perturbed(0.7).score(x), _autograd_score(mixture.perturbed(0.7).log_prob, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(_banana_targets()))
def test_banana_scores_equal_autograd(name):
    density = _banana_targets()[name]
    x = 2.0 * torch.randn(200, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(density.score(x), _autograd_score(density.log_prob, x), rtol=1e-5, atol=1e-5)


def test_mixture_log_prob_matches_torch_distributions():
    mixture = _mixtures()["full"]
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=mixture.weights.double()),
        torch.distributions.MultivariateNormal(mixture.means.double(), covariance_matrix=mixture.covariances.double()),
    )
    x = 2.0 * torch.randn(100, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(mixture.log_prob(x), reference.log_prob(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mixture.prob(x), reference.log_prob(x).exp(), rtol=1e-10, atol=1e-12)
    responsibilities = mixture.responsibilities(x)
    assert responsibilities.shape == (100, 3)
    torch.testing.assert_close(responsibilities.sum(1), torch.ones(100, dtype=torch.float64))


def test_covariance_forms_agree():
    """An isotropic mixture, its diagonal form and its full form are the same density."""
    means = [[1.0, -2.0], [0.0, 3.0]]
    forms = [GaussianMixture([0.4, 0.6], means, [0.5, 2.0]),
             GaussianMixture([0.4, 0.6], means, [[0.5, 0.5], [2.0, 2.0]]),
             GaussianMixture([0.4, 0.6], means, [[[0.5, 0.0], [0.0, 0.5]], [[2.0, 0.0], [0.0, 2.0]]])]
    x = 4.0 * torch.randn(50, 2, generator=torch.Generator().manual_seed(4))
    for form in forms[1:]:
        torch.testing.assert_close(form.log_prob(x), forms[0].log_prob(x), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(form.score(x), forms[0].score(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["isotropic", "full"])
def test_perturbed_mixture_equals_monte_carlo_convolution(kind):
    """p_sigma(x) = E_z[p(x + sigma z)]: the closed form lies within 4 Monte-Carlo standard errors."""
    mixture, sigma, n_draws = _mixtures()[kind], 0.8, 200_000
    generator = torch.Generator().manual_seed(5)
    x = mixture.sample(6, generator=generator).double()
    z = torch.randn(n_draws, 3, generator=generator, dtype=torch.float64)
    closed_form = mixture.perturbed(sigma).prob(x)
    for point, expected in zip(x, closed_form):
        values = mixture.prob(point + sigma * z)  # (n_draws,)
        standard_error = values.std() / math.sqrt(n_draws)
        assert abs(values.mean() - expected) < 4 * standard_error


def test_perturbed_mixture_adds_sigma_squared_to_covariances():
    mixture = _mixtures()["full"]
    perturbed = mixture.perturbed(1.5)
    torch.testing.assert_close(perturbed.covariances, mixture.covariances + 2.25 * torch.eye(3))
    assert mixture.perturbed(1.5) is perturbed  # cached, so samplers may call it every step
    torch.testing.assert_close(mixture.perturbed_score(torch.ones(2, 3), 1.5), perturbed.score(torch.ones(2, 3)))


@pytest.mark.parametrize("kind", ["isotropic", "full"])
def test_scaled_perturbed_mixture_is_the_law_of_a_scaled_and_noised_sample(kind):
    """a x + sigma z: means a mu_k, covariances a^2 Sigma_k + sigma^2 I; a = 1 is perturbed."""
    mixture = _mixtures()[kind]
    scaled = mixture.scaled_perturbed(0.6, 0.8)
    torch.testing.assert_close(scaled.means, 0.6 * mixture.means)
    torch.testing.assert_close(scaled.covariances,
                               0.36 * mixture.covariances + 0.64 * torch.eye(3))
    generator = torch.Generator().manual_seed(3)
    x = mixture.sample(200_000, generator=generator).double()
    draws = 0.6 * x + 0.8 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    mean = scaled.weights.double() @ scaled.means.double()  # the mixture's mean
    torch.testing.assert_close(draws.mean(0), mean, atol=0.02, rtol=0)
    points = torch.ones(2, 3)
    torch.testing.assert_close(mixture.scaled_perturbed(1.0, 1.5).score(points),
                               mixture.perturbed(1.5).score(points))


@pytest.mark.parametrize("name, args", [("scale", (0.0, 1.0)), ("sigma", (1.0, -1.0)),
                                        ("scale", (float("nan"), 1.0))])
def test_scaled_perturbed_names_a_bad_argument(name, args):
    with pytest.raises(ValueError, match=f"{name} must be a positive"):
        ncsn_toy_mixture().scaled_perturbed(*args)


def _grid_convolution(banana: Banana, x: torch.Tensor, sigma: float, spacing: float) -> torch.Tensor:
    """p_sigma(x) = sum over a fine 2-D grid of p(u) N(x - u; 0, sigma^2 I) spacing^2."""
    u0 = torch.arange(-7.0, 7.0, spacing, dtype=torch.float64)
    u1 = torch.arange(-25.0, 8.0, spacing, dtype=torch.float64)
    grid = torch.cartesian_prod(u0, u1)  # (G, 2)
    density = banana.prob(grid)
    kernel = torch.exp(-0.5 * torch.cdist(x, grid).square() / sigma**2) / (2 * math.pi * sigma**2)  # (N, G)
    return kernel @ density * spacing**2


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_perturbed_banana_equals_grid_convolution(sigma):
    banana = Banana()
    generator = torch.Generator().manual_seed(6)
    x = (banana.sample(4, generator=generator) + sigma * torch.randn(4, 2, generator=generator)).double()
    expected = _grid_convolution(banana, x, sigma, spacing=0.04)
    torch.testing.assert_close(banana.perturbed(sigma).prob(x), expected, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("name", ["isotropic", "full", "banana", "haario banana"])
def test_samples_match_mean_and_covariance(name):
    density = {**_mixtures(), **_banana_targets()}[name]
    n = 100_000
    x = density.sample(n, generator=torch.Generator().manual_seed(7))
    assert x.shape == (n, density.dim) and x.dtype == torch.float32
    x = x.double()
    mean, covariance = density.mean.double(), density.covariance.double()
    mean_error = x.std(0) / math.sqrt(n)
    assert ((x.mean(0) - mean).abs() < 4.5 * mean_error).all()
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]  # (n, D, D)
    covariance_error = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - covariance).abs() < 4.5 * covariance_error + 1e-9).all()


def test_sample_is_reproducible_and_float32():
    mixture = ncsn_toy_mixture()
    first = mixture.sample(10, generator=torch.Generator().manual_seed(8))
    second = mixture.sample(10, generator=torch.Generator().manual_seed(8))
    assert first.dtype == torch.float32 and first.shape == (10, 2)
    assert torch.equal(first, second)


def test_ncsn_toy_mixture():
    mixture = ncsn_toy_mixture()
    torch.testing.assert_close(mixture.weights, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(mixture.means, torch.tensor([[5.0, 5.0], [-5.0, -5.0]]))
    torch.testing.assert_close(mixture.covariances, torch.eye(2).expand(2, 2, 2))


@pytest.mark.parametrize("radius", [1e3, 1e4])
def test_finite_far_from_the_modes(radius):
    angles = torch.linspace(0, 2 * math.pi, 17)[:-1]
    x = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (16, 2), float32
    densities = {"toy": ncsn_toy_mixture(), "full": GaussianMixture([0.5, 0.5], [[0.0, 0.0], [3.0, 1.0]],
                                                                   [[[1.0, 0.5], [0.5, 1.0]], [[0.2, 0.0], [0.0, 3.0]]]),
                 **_banana_targets()}
    for name, density in densities.items():
        assert torch.isfinite(density.log_prob(x)).all(), name
        assert torch.isfinite(density.score(x)).all(), name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": [0.5, 0.6]}, "weights must sum to one"),
        ({"weights": [1.2, -0.2]}, "weights must be non-negative"),
        ({"weights": [[0.5, 0.5]]}, r"weights must have shape \(K,\)"),
        ({"means": [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]}, r"means must have shape \(K, D\) = \(2, D\)"),
        ({"means": [0.0, 1.0]}, r"means must have shape \(K, D\)"),
        ({"covariances": [1.0, 1.0, 1.0]}, "covariances must have shape"),
        ({"covariances": [1.0, -1.0]}, "covariances must be positive definite"),
        ({"covariances": [[[1.0, 0.5], [0.0, 1.0]]] * 2}, "covariances must be symmetric"),
        ({"covariances": [[[1.0, 2.0], [2.0, 1.0]]] * 2}, "covariances must be symmetric positive definite"),
        ({"means": [[0.0, float("nan")], [1.0, 1.0]]}, "means must contain only finite"),
    ],
)
def test_mixture_rejects_bad_parameters(kwargs, match):
    arguments = {"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]], "covariances": [1.0, 1.0], **kwargs}
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**arguments)


@pytest.mark.parametrize("density", [ncsn_toy_mixture(), Banana(), Banana().perturbed(1.0)], ids=repr)
def test_methods_reject_bad_points(density):
    for method in (density.log_prob, density.score, density.prob):
        with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
            method(torch.zeros(4, 3))
        with pytest.raises(ValueError, match=r"x must have shape \(N, D\)"):
            method(torch.zeros(2))


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_perturbed_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be a positive"):
        ncsn_toy_mixture().perturbed(sigma)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        Banana().perturbed(sigma)


def test_banana_rejects_bad_parameters():
    with pytest.raises(ValueError, match="scale must be a positive"):
        Banana(scale=0.0)
    with pytest.raises(ValueError, match="curvature must be a non-negative"):
        Banana(curvature=-1.0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        Banana().sample(0)


@st.composite
def small_mixtures(draw):
    n_components = draw(st.integers(1, 3))
    dim = draw(st.integers(1, 3))
    numbers = st.floats(-5.0, 5.0, allow_nan=False)
    raw_weights = torch.tensor(draw(st.lists(st.floats(0.05, 1.0), min_size=n_components, max_size=n_components)))
    means = torch.tensor(draw(st.lists(st.lists(numbers, min_size=dim, max_size=dim),
                                       min_size=n_components, max_size=n_components)))
    kind = draw(st.sampled_from(["isotropic", "diagonal", "full"]))
    if kind == "isotropic":
        covariances = torch.tensor(draw(st.lists(st.floats(0.1, 5.0), min_size=n_components, max_size=n_components)))
    else:
        factors = torch.tensor(draw(st.lists(numbers, min_size=n_components * dim * dim,
                                             max_size=n_components * dim * dim))).reshape(n_components, dim, dim)
        covariances = factors @ factors.mT / 5.0 + 0.1 * torch.eye(dim)  # (K, D, D), positive definite
        if kind == "diagonal":
            covariances = covariances.diagonal(dim1=-2, dim2=-1)
    return GaussianMixture(raw_weights / raw_weights.sum(), means, covariances)


@settings(max_examples=40, deadline=None)
@given(mixture=small_mixtures(), seed=st.integers(0, 2**16))
def test_property_score_is_gradient_and_far_field_is_finite(mixture, seed):
    generator = torch.Generator().manual_seed(seed)
    x = 4.0 * torch.randn(16, mixture.dim, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(mixture.score(x), _autograd_score(mixture.log_prob, x), rtol=1e-5, atol=1e-5)
    directions = torch.nn.functional.normalize(torch.randn(16, mixture.dim, generator=generator), dim=1)
    radii = torch.logspace(0, 4, 16)[:, None]  # |x| from 1 to 1e4
    far = directions * radii  # (16, D), float32
    assert torch.isfinite(mixture.log_prob(far)).all()
    assert torch.isfinite(mixture.score(far)).all()


def test_perturbed_banana_samples_and_cache():
    banana = Banana()
    perturbed = banana.perturbed(1.0)
    assert banana.perturbed(1.0) is perturbed
    n = 100_000
    x = perturbed.sample(n, generator=torch.Generator().manual_seed(9)).double()
    expected = banana.covariance.double() + torch.eye(2, dtype=torch.float64)
    products = (x - x.mean(0))[:, :, None] * (x - x.mean(0))[:, None, :]  # (n, 2, 2)
    assert ((products.mean(0) - expected).abs() < 4.5 * products.std(0) / math.sqrt(n)).all()
    torch.testing.assert_close(banana.perturbed_score(x[:5].float(), 1.0), perturbed.score(x[:5].float()))


@pytest.mark.parametrize("call", [
    lambda: ncsn_toy_mixture().perturbed(1e155),
    lambda: ncsn_toy_mixture().perturbed_score(torch.zeros(2, 2), torch.tensor([1e30, 1.0])),
    lambda: Banana(scale=1e200),
    lambda: Banana().perturbed(1e20),
], ids=["mixture", "mixture per point", "banana scale", "banana sigma"])
def test_a_noise_level_whose_variance_overflows_is_named(call):
    with pytest.raises(ValueError, match=r"must be at most 1.84e\+19 \(its square is a variance"):
        call()
