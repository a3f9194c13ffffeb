"""Data sets of the course: the 8x8 digits shipped with scikit-learn, MNIST and CIFAR-10.

Every loader returns float32 tensors. Images come as (N, C, H, W) on the [0, 1] scale.
The digits work offline (scikit-learn ships them); MNIST and CIFAR-10 need torchvision and
a network connection (Colab has both).
"""

from __future__ import annotations

import numpy as np
import torch

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.3
DIGITS_GREY_LEVELS = 17  # scikit-learn's digits take the integer values 0..16


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)  # (1797, 8, 8), (1797,)


def _digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    return train_test_split(
        indices, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )


def load_digits(
    split: str = "train",
    *,
    dequantize: bool = False,
    return_labels: bool = False,
    generator: torch.Generator | None = None,
):
    """The 8x8 handwritten digits of scikit-learn (1,797 images, offline).

    Parameters
    ----------
    split : {"train", "test", "all"}
        A 70/30 split stratified by class with a fixed seed (1,257 / 540 images), so every
        chapter and test sees the same held-out digits.
    dequantize : bool
        Add uniform noise of one grey level, the authors' convention for 8-bit images
        (``x * 255/256 + U/256``) written for the 17 grey levels of the digits:
        ``(pixel + U(0, 1)) / 17``, which stays in [0, 1]. Without it the images are
        ``pixel / 16`` (exactly 0 and 1 at the ends).
    return_labels : bool
        Also return the class labels.
    generator : torch.Generator, optional
        Source of the dequantisation noise.

    Returns
    -------
    Tensor, shape (N, 1, 8, 8)
        Images in [0, 1]; with ``return_labels`` a pair (images, LongTensor (N,)).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, labels = _digits_arrays()
    if split != "all":
        train, test = _digits_split_indices(labels)
        chosen = train if split == "train" else test
        images, labels = images[chosen], labels[chosen]
    pixels = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8), integers 0..16
    if dequantize:
        noise = torch.rand(pixels.shape, generator=generator)
        x = (pixels + noise) / DIGITS_GREY_LEVELS
    else:
        x = pixels / (DIGITS_GREY_LEVELS - 1)
    return (x, torch.from_numpy(labels)) if return_labels else x


def _torchvision_dataset(name: str, root: str, train: bool, download: bool) -> torch.Tensor:
    try:
        import torchvision
    except ImportError:
        raise RuntimeError(
            f"load_{name.lower()} needs torchvision, which is not installed; "
            "use scorelab.data.load_digits() (offline 8x8 digits) instead, "
            "or `pip install torchvision` where a network is available"
        ) from None
    cls = getattr(torchvision.datasets, name)
    try:
        dataset = cls(root, train=train, download=download)
    except (OSError, RuntimeError) as error:
        raise RuntimeError(
            f"could not load {name} into {root!r} ({error}); without a network use "
            "scorelab.data.load_digits() (offline 8x8 digits) instead"
        ) from error
    data = torch.as_tensor(np.asarray(dataset.data))
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
    return images.float() / 255.0


def load_mnist(root: str = "data", *, train: bool = True, download: bool = True) -> torch.Tensor:
    """MNIST through torchvision: (N, 1, 28, 28) in [0, 1]. Raises with the offline alternative."""
    return _torchvision_dataset("MNIST", root, train, download)


def load_cifar10(root: str = "data", *, train: bool = True, download: bool = True) -> torch.Tensor:
    """CIFAR-10 through torchvision: (N, 3, 32, 32) in [0, 1]. Raises with the offline alternative."""
    return _torchvision_dataset("CIFAR10", root, train, download)
