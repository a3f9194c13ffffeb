"""Random draws follow the generator's device and land on the data's device."""

import pytest
import torch

from scorelab import _tensors


@pytest.mark.parametrize("draw", [
    lambda g: _tensors.randn((3, 2), generator=g),
    lambda g: _tensors.rand((4,), generator=g, dtype=torch.float64),
    lambda g: _tensors.randint(10, (5,), generator=g),
    lambda g: _tensors.randperm(7, generator=g),
    lambda g: _tensors.multinomial(torch.tensor([0.2, 0.8]), 6, generator=g),
])
def test_a_seed_gives_the_same_draws(draw):
    first = draw(torch.Generator().manual_seed(3))
    again = draw(torch.Generator().manual_seed(3))
    other = draw(torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_draws_match_torch_on_the_cpu():
    expected = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_tensors.randn((3, 2), generator=torch.Generator().manual_seed(0)), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_cuda_data_with_a_generator_on_either_device(generator_device):
    g = torch.Generator(generator_device).manual_seed(0)
    x = _tensors.randn((4, 2), generator=g, device="cuda")
    again = _tensors.randn((4, 2), generator=torch.Generator(generator_device).manual_seed(0),
                           device="cuda")
    assert x.device.type == "cuda" and torch.equal(x, again)
