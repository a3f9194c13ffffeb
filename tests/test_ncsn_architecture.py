"""CondRefineNetDilated and its blocks: shapes, parameter count, the conditional norm."""

import pytest
import torch

from scorelab.ncsn import (
    NCSN,
    CondRefineNetDilated,
    ConditionalInstanceNorm2dPlus,
    ConvMeanPool,
    default_sigmas,
)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 8)])
def test_score_has_the_input_shape(channels, size):
    torch.manual_seed(0)
    net = CondRefineNetDilated(channels, size, ngf=4, num_classes=3)
    x = torch.rand(2, channels, size, size)
    out = net(x, torch.tensor([0, 2]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_parameter_count_matches_the_authors_mnist_model():
    net = CondRefineNetDilated(channels=1, image_size=28, ngf=64, num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == 7_638_657


def test_parameter_count_grows_with_ngf_squared_and_ignores_image_size():
    count = lambda **kw: sum(p.numel() for p in CondRefineNetDilated(**kw).parameters())  # noqa: E731
    assert count(channels=1, image_size=8, ngf=32, num_classes=10) == 1_964_865
    assert count(channels=1, image_size=28, ngf=32, num_classes=10) == 1_964_865


def test_conditional_instance_norm_plus_equals_direct_computation():
    torch.manual_seed(0)
    norm = ConditionalInstanceNorm2dPlus(num_features=3, num_classes=4)
    with torch.no_grad():
        norm.embed.weight.normal_()  # move away from the initial 1/1/0 so every term counts
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 2 + 1
    labels = torch.tensor([3, 1])
    out = norm.double()(x, labels)
    weights = norm.embed.weight.double()
    for n in range(2):
        gamma, alpha, beta = weights[labels[n]].reshape(3, 3)
        mu = [x[n, k].mean() for k in range(3)]
        m = sum(mu) / 3
        v = sum((u - m) ** 2 for u in mu) / 2  # unbiased over the channel means
        for k in range(3):
            s = ((x[n, k] - mu[k]) ** 2).mean().add(1e-5).sqrt()
            expected = gamma[k] * ((x[n, k] - mu[k]) / s + alpha[k] * (mu[k] - m) / (v + 1e-5).sqrt()) + beta[k]
            torch.testing.assert_close(out[n, k], expected, rtol=1e-10, atol=1e-10)


def test_conditional_instance_norm_starts_near_plain_instance_norm():
    norm = ConditionalInstanceNorm2dPlus(num_features=4, num_classes=2)
    gamma, alpha, beta = norm.embed.weight.detach().reshape(2, 3, 4).unbind(1)
    assert torch.all(beta == 0)
    assert abs(gamma.mean().item() - 1) < 0.05 and abs(alpha.mean().item() - 1) < 0.05


def test_conv_mean_pool_halves_the_resolution():
    assert ConvMeanPool(2, 5)(torch.rand(3, 2, 8, 8)).shape == (3, 5, 4, 4)


def test_bad_images_raise_value_errors():
    model = NCSN(ngf=4, sigmas=[1.0, 0.1])
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.rand(2, 1, 9, 9), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="image_size must be even"):
        CondRefineNetDilated(1, 7, 4, 2)


@pytest.mark.parametrize("sigmas", [[0.1, 1.0], [1.0, 1.0], [1.0, -0.1], [1.0, float("nan")]])
def test_bad_sigma_ladders_raise(sigmas):
    with pytest.raises(ValueError, match="sigmas must be"):
        NCSN(ngf=4, sigmas=sigmas)


def test_score_maps_sigma_to_its_level():
    torch.manual_seed(0)
    model = NCSN(ngf=4, sigmas=default_sigmas(5.0, 0.01, 6))
    x = torch.rand(3, 1, 8, 8)
    for i, sigma in enumerate(model.sigmas.tolist()):
        assert model.level(sigma) == i
        torch.testing.assert_close(model.score(x, sigma), model(x, torch.full((3,), i)))
    with pytest.raises(ValueError, match="sigma must be one of"):
        model.score(x, 0.5)


def test_default_ladder_is_the_papers():
    torch.testing.assert_close(NCSN(ngf=4).sigmas, torch.logspace(0, -2, 10))
