"""CondRefineNetDilated and its blocks: shapes, parameter count, the conditional norm."""

import pytest
import torch

from scorelab.ncsn import (
    NCSN,
    CondCRPBlock,
    CondMSFBlock,
    CondRCUBlock,
    CondRefineBlock,
    CondRefineNetDilated,
    ConditionalInstanceNorm2dPlus,
    ConditionalResidualBlock,
    ConvMeanPool,
    block_shapes,
    conv3x3,
    dilated_conv3x3,
    summary_table,
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


def test_score_follows_a_loaded_ladder():
    # The score adapter reads a CPU copy of the ladder (no device read a step); a loaded state
    # replaces it, so the loaded levels, and only they, are the model's.
    torch.manual_seed(0)
    source = NCSN(ngf=4, sigmas=[2.0, 0.2])
    model = NCSN(ngf=4, sigmas=[1.0, 0.1])
    model.load_state_dict(source.state_dict())
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(model.score(x, 0.2), source.score(x, 0.2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="sigma must be one of"):
        model.score(x, 0.1)


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


# --------------------------------------------------------------- bad input at the entry points


def _tiny_ncsn():
    torch.manual_seed(0)
    return NCSN(ngf=2, sigmas=[1.0, 0.5, 0.1])


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0]), r"labels must be an integer tensor of shape \(2,\).*got shape \(1,\)"),
        (torch.tensor([[0], [1]]), r"shape \(2,\).*got shape \(2, 1\)"),
        (torch.tensor(0), r"shape \(2,\).*got shape \(\)"),
        (torch.tensor([0, 3]), r"lie in 0\.\.2 \(noise-level indices\), got values from 0 to 3"),
        (torch.tensor([-1, 0]), r"lie in 0\.\.2 \(noise-level indices\), got values from -1 to 0"),
        (torch.tensor([0.0, 1.0]), "got dtype torch.float32"),
        (torch.tensor([True, False]), "got dtype torch.bool"),
        ([0, 1], "got list"),
    ],
)
def test_bad_labels_are_named_by_the_model_and_the_network(labels, message):
    model, x = _tiny_ncsn(), torch.rand(2, 1, 8, 8)
    for call in (model, model.net):
        with pytest.raises(ValueError, match=message):
            call(x, labels)


def test_integer_labels_of_any_width_give_the_same_score():
    model, x = _tiny_ncsn(), torch.rand(2, 1, 8, 8)
    reference = model(x, torch.tensor([0, 2]))
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(model(x, torch.tensor([0, 2], dtype=dtype)), reference)


def test_images_of_another_size_or_dtype_are_refused_with_a_hint():
    model, labels = _tiny_ncsn(), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\), got \(2, 1, 6, 6\)"):
        model(torch.zeros(2, 1, 6, 6), labels)  # fully convolutional, but built for 8x8
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        model.net(torch.zeros(2, 1, 6, 6), labels)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for call in (lambda: model(x, labels), lambda: model.score(x, 1.0), lambda: model.loss(x)):
        with pytest.raises(ValueError, match=r"x must have the dtype of the network's weights, "
                                             r"torch.float32, got torch.float64.*x.float\(\)"):
            call()
    model.double()  # a converted model takes its own dtype
    assert model.score(x, 1.0).dtype == torch.float64


def test_widths_that_would_make_the_norm_nan_are_refused():
    with pytest.raises(ValueError, match="ngf must be an integer >= 2.*2 channels"):
        NCSN(ngf=1)
    with pytest.raises(ValueError, match="num_features must be an integer >= 2"):
        ConditionalInstanceNorm2dPlus(1, 3)
    with pytest.raises(ValueError, match="eps must be a positive"):
        ConditionalInstanceNorm2dPlus(2, 3, eps=-1)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        ConditionalInstanceNorm2dPlus(2, 0)
    model = _tiny_ncsn()  # ngf=2, the smallest width, is finite
    assert torch.isfinite(model.score(torch.rand(2, 1, 8, 8), 1.0)).all()
    assert torch.isfinite(model.loss(torch.rand(2, 1, 8, 8)))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: conv3x3(0, 4), "in_channels must be a positive integer, got 0"),
        (lambda: conv3x3(4, 2.5), "out_channels must be a positive integer"),
        (lambda: dilated_conv3x3(2, 4, dilation=0), "dilation must be a positive integer, got 0"),
        (lambda: ConvMeanPool(2, 4, kernel_size=0), "kernel_size must be a positive integer"),
        (lambda: ConditionalResidualBlock(4, 4, 3, dilation=0), "dilation must be a positive"),
        (lambda: ConditionalResidualBlock(1, 4, 3), "in_channels must be an integer >= 2"),
        (lambda: ConditionalResidualBlock(4, 1, 3), "out_channels must be an integer >= 2"),
        (lambda: CondCRPBlock(4, 3, n_stages=-1), "n_stages must be a positive integer, got -1"),
        (lambda: CondRCUBlock(4, 3, n_blocks=0, n_stages=2), "n_blocks must be a positive"),
        (lambda: CondRCUBlock(4, 3, n_blocks=1, n_stages=0), "n_stages must be a positive"),
        (lambda: CondMSFBlock([], 4, 3), "in_channels must be a non-empty list"),
        (lambda: CondMSFBlock([4, -2], 4, 3), r"in_channels\[1\] must be an integer >= 2"),
        (lambda: CondRefineBlock([4, 4], 4, 3, start=True), r"in_channels must be \[features\]"),
        (lambda: CondRefineBlock(4, 4, 3), "in_channels must be a non-empty list"),
    ],
)
def test_layer_constructors_name_their_bad_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_fusion_blocks_take_one_input_per_path():
    labels = torch.tensor([0, 1])
    xs = [torch.rand(2, 4, 4, 4)]  # one input for two paths: zip would drop a path silently
    with pytest.raises(ValueError, match="xs must be a list of 2 tensors"):
        CondMSFBlock([4, 4], 4, 3)(xs, labels, (4, 4))
    with pytest.raises(ValueError, match="xs must be a list of 2 tensors"):
        CondRefineBlock([4, 4], 4, 3)(xs, labels, (4, 4))


def test_sample_requires_a_positive_record_every():
    model = _tiny_ncsn()
    with pytest.raises(ValueError, match="record_every must be a positive integer, got 0"):
        model.sample(2, snapshots=True, record_every=0, n_steps_each=1)
    _, path = model.sample(2, snapshots=True, record_every=1, n_steps_each=2)
    assert path.shape[0] == 1 + 3 * 2 + 1


def test_summary_table_runs_on_a_converted_network():
    net = CondRefineNetDilated(1, 8, 2, 3).double()
    assert summary_table(net).splitlines()[-1].split()[0] == "total"


def test_block_shapes_give_each_blocks_output_in_forward_order():
    net = CondRefineNetDilated(channels=1, image_size=8, ngf=4, num_classes=3)
    shapes = block_shapes(net)
    assert list(shapes) == [name for name, _ in net.named_children()]
    assert shapes["begin_conv"] == (4, 8, 8) and shapes["res2"] == (8, 4, 4)
    assert shapes["refine4"] == (4, 8, 8) and shapes["end_conv"] == (1, 8, 8)
