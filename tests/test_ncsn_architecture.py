"""CondRefineNetDilated and its blocks: shapes, parameter count, the conditional norm."""

import pytest
import torch

from scorelab.ncsn import (
    NCSN,
    CondRefineNetDilated,
    ConditionalInstanceNorm2dPlus,
    ConvMeanPool,
)
from scorelab.noise import geometric_sigmas


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


def test_parameter_counts_quoted_in_chapter_6():
    """The shipped digits model (ngf 16, 22 levels) and the live run's (ngf 8): the conditional
    normalisations make the count grow with the number of levels as well as with ngf."""
    count = lambda **kw: sum(p.numel() for p in CondRefineNetDilated(**kw).parameters())  # noqa: E731
    assert count(channels=1, image_size=8, ngf=16, num_classes=22) == 583_905
    assert count(channels=1, image_size=8, ngf=8, num_classes=22) == 176_049
    assert count(channels=1, image_size=8, ngf=16, num_classes=10) == 518_817


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
    model = NCSN(ngf=4, sigmas=geometric_sigmas(5.0, 0.01, 6))
    x = torch.rand(3, 1, 8, 8)
    for i, sigma in enumerate(model.sigmas.tolist()):
        torch.testing.assert_close(model.score(x, sigma), model(x, torch.full((3,), i)))
    levels = model.sigmas[[5, 0, 2]]  # one level per image
    torch.testing.assert_close(model.score(x, levels), model(x, torch.tensor([5, 0, 2])))
    with pytest.raises(ValueError, match="sigma must be one of"):
        model.score(x, 0.5)
    with pytest.raises(ValueError, match="x must have shape"):
        model.score(torch.rand(3, 1, 6, 6), 5.0)


def _golden_output() -> torch.Tensor:
    """CondRefineNetDilated on fixed weights and input, in float64: (3, 1, 8, 8).

    Every parameter is drawn from one seeded generator (scaled by 1/sqrt(fan-in)), so the
    output depends on the architecture's computation only, not on torch's initialisers.
    """
    net = CondRefineNetDilated(channels=1, image_size=8, ngf=8, num_classes=3).double()
    generator = torch.Generator().manual_seed(2019)
    with torch.no_grad():
        for parameter in net.parameters():
            fan_in = parameter[0].numel() if parameter.ndim > 1 else 1
            parameter.copy_(torch.randn(parameter.shape, generator=generator,
                                        dtype=torch.float64) / fan_in**0.5)
        x = torch.rand(3, 1, 8, 8, generator=generator, dtype=torch.float64)
        return net(x, torch.tensor([0, 1, 2]))


def test_golden_output_of_cond_refine_net_dilated():
    # Stored from this implementation (torch 2.13, CPU): a change to any block, the norm,
    # the order of the stages or the use of the labels changes these numbers.
    out = _golden_output()
    stats = torch.stack([out.mean(), out.std(), out.abs().max()])
    torch.testing.assert_close(stats, torch.tensor([-0.5605948700, 0.2069701788, 1.1347842779],
                                                   dtype=torch.float64), rtol=1e-8, atol=1e-9)
    per_label = torch.stack([out.flatten(1).mean(1), out.flatten(1).std(1)], dim=1)  # (3, 2)
    expected = torch.tensor([[-0.6167932708, 0.2357120532], [-0.4296468227, 0.1677926339],
                             [-0.6353445165, 0.1408941269]], dtype=torch.float64)
    torch.testing.assert_close(per_label, expected, rtol=1e-8, atol=1e-9)
    corner = torch.tensor([-0.7704205093, -0.5427650492, -0.8439935436, -0.3252945495],
                          dtype=torch.float64)
    torch.testing.assert_close(out[0, 0, 0, :4], corner, rtol=1e-8, atol=1e-9)


def test_default_ladder_is_the_papers():
    torch.testing.assert_close(NCSN(ngf=4).sigmas, torch.logspace(0, -2, 10))
