"""scorelab.data: the digits split, dequantisation, and the torchvision error path."""

import sys

import pytest
import torch

from scorelab.data import load_cifar10, load_digits, load_mnist


def test_digits_shapes_scale_and_split():
    train, train_labels = load_digits("train", return_labels=True)
    test, test_labels = load_digits("test", return_labels=True)
    everything = load_digits("all")
    assert train.shape == (1257, 1, 8, 8) and test.shape == (540, 1, 8, 8)
    assert everything.shape == (1797, 1, 8, 8) and train.dtype == torch.float32
    assert train.min() == 0 and train.max() == 1
    assert torch.equal(torch.unique(everything * 16), torch.arange(17.0))  # pixel / 16
    # The two parts are the whole set (no image lost or duplicated).
    assert torch.equal(torch.cat([train, test]).flatten(1).sum(0), everything.flatten(1).sum(0))


def test_digits_split_is_fixed_and_stratified():
    _, first = load_digits("test", return_labels=True)
    _, again = load_digits("test", return_labels=True)
    assert torch.equal(first, again)
    _, train_labels = load_digits("train", return_labels=True)
    share_train = torch.bincount(train_labels) / len(train_labels)
    share_test = torch.bincount(first) / len(first)
    # Stratification keeps the class shares equal up to the rounding of one image per class.
    assert (share_train - share_test).abs().max() < 2 / len(first)


def test_dequantisation_adds_one_grey_level_of_uniform_noise():
    plain = load_digits("train")
    noisy = load_digits("train", dequantize=True, generator=torch.Generator().manual_seed(0))
    again = load_digits("train", dequantize=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert noisy.min() >= 0 and noisy.max() <= 1
    offset = noisy * 17 - plain * 16  # the uniform noise, in grey levels
    assert offset.min() >= 0 and offset.max() < 1
    # Its mean over 80,448 pixels is 1/2 within 4 standard errors (1/sqrt(12 n)).
    assert abs(offset.mean().item() - 0.5) < 4 / (12 * offset.numel()) ** 0.5


def test_bad_split_raises():
    with pytest.raises(ValueError, match="split must be"):
        load_digits("validation")


@pytest.mark.parametrize("loader", [load_mnist, load_cifar10])
def test_image_sets_without_torchvision_name_the_offline_alternative(loader, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without torchvision
    with pytest.raises(RuntimeError, match="load_digits"):
        loader(root=str(tmp_path))
