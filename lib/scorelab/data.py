"""Data sets of the course: 2-D toys, the 8x8 digits shipped with scikit-learn, MNIST/CIFAR-10.

Every loader returns float32 tensors. Images come as (N, C, H, W) on the [0, 1] scale.
The digits work offline (scikit-learn ships them); MNIST and CIFAR-10 need torchvision and
a network connection (Colab has both).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scorelab._validation import check_positive, check_positive_int

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


def two_moons(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two interleaved half circles, (n, 2): radius 1, the second shifted by (1, -0.5)."""
    n = check_positive_int("n", n)
    check_positive("noise", noise)
    upper = torch.rand(n, generator=generator) < 0.5
    angle = torch.rand(n, generator=generator) * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (n, 2)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    x = torch.where(upper[:, None], x, lower)
    return x + noise * torch.randn(n, 2, generator=generator)


def rings(
    n: int,
    *,
    radii: tuple[float, ...] = (1.0, 2.0),
    noise: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Concentric rings, (n, 2): points spread uniformly over the rings, each ring equally likely."""
    n = check_positive_int("n", n)
    check_positive("noise", noise)
    if not radii or any(float(r) <= 0 for r in radii):
        raise ValueError(f"radii must be a non-empty sequence of positive numbers, got {radii!r}")
    which = torch.randint(len(radii), (n,), generator=generator)
    radius = torch.tensor([float(r) for r in radii])[which]  # (n,)
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (n, 2)
    return x + noise * torch.randn(n, 2, generator=generator)


def toy_mixture(n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples (n, 2) of the NCSN paper's mixture 0.8 N((5, 5), I) + 0.2 N((-5, -5), I)."""
    n = check_positive_int("n", n)
    upper = torch.rand(n, generator=generator) < 0.8
    centres = torch.where(upper[:, None], torch.tensor([5.0, 5.0]), torch.tensor([-5.0, -5.0]))
    return centres + torch.randn(n, 2, generator=generator)


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
