"""Data sets of the course: the 8x8 digits shipped with scikit-learn, MNIST and CIFAR-10.

Every loader returns float32 tensors. Images come as (N, C, H, W) on the [0, 1] scale.
The digits work offline (scikit-learn ships them). MNIST and CIFAR-10 are read from the files
in the layout torchvision's dataset classes write; downloading them needs torchvision and a
network connection (Colab has both).
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from scorelab._tensors import rand
from scorelab._validation import check_flag

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
    if check_flag("dequantize", dequantize):
        noise = rand(pixels.shape, generator=generator)  # a generator on the CPU (the data's)
        x = (pixels + noise) / DIGITS_GREY_LEVELS
    else:
        x = pixels / (DIGITS_GREY_LEVELS - 1)
    return (x, torch.from_numpy(labels)) if return_labels else x


# The on-disk layouts that torchvision's MNIST and CIFAR10 classes download to and read from.
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """An array in the IDX format of LeCun's MNIST files (plain or ``.gz``).

    Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions d,
    then d big-endian int32 sizes and the values in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (gzip.BadGzipFile, EOFError) as error:
        raise ValueError(f"{path} is not a readable gzip file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (its first bytes are {raw[:4]!r})")
    ndim, offset = raw[3], 4 + 4 * raw[3]
    if len(raw) < offset:
        raise ValueError(f"{path} is truncated: its header announces {ndim} sizes, "
                         f"the file ends after {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}i", raw[4:offset])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = (len(raw) - offset) // dtype.itemsize
    values = np.frombuffer(raw, dtype=dtype, offset=offset, count=count)
    if values.size != math.prod(shape) or (len(raw) - offset) % dtype.itemsize:
        problem = "is truncated" if values.size < math.prod(shape) else "has bytes past its data"
        raise ValueError(f"{path} {problem}: its header announces shape {shape}, "
                         f"it holds {len(raw) - offset} bytes of {dtype.itemsize}-byte values")
    return values.reshape(shape).astype(dtype.newbyteorder("="))  # native order, for torch


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_mnist(root: Path, train: bool):
    folder = root / "MNIST" / "raw"
    found = [_find(folder, name) for name in MNIST_FILES[train]]
    if None in found:
        return None
    images, labels = (read_idx(path) for path in found)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"{found[0]} and {found[1]} must hold N bytes images (N, H, W) and N "
                         f"labels, got {images.dtype} {images.shape} and {labels.shape}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


class _ForbiddenObjectError(pickle.UnpicklingError):
    """A CIFAR-10 batch that holds something other than arrays (it could run code on load)."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run code on load."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("_codecs", "encode")}  # how protocol 2 writes bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _ForbiddenObjectError(
                f"a CIFAR-10 batch may hold only arrays, found {module}.{name}")
        return super().find_class(module, name)


def _read_cifar10(root: Path, train: bool):
    paths = [root / CIFAR10_FOLDER / name for name in CIFAR10_FILES[train]]
    if not all(path.is_file() for path in paths):
        return None
    batches = [_read_cifar10_batch(path) for path in paths]
    data = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: bytes (n, 3072) and labels (n,), checked to agree."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()  # as written by Python 2
    except _ForbiddenObjectError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is corrupt or not a CIFAR-10 batch ({error})") from None
    if not isinstance(batch, dict) or not {"data", "labels"} <= set(batch):
        raise ValueError(f"{path} must hold a dict with 'data' and 'labels', got "
                         f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be bytes of shape (n, 3072), got {data.dtype} "
                         f"{data.shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be {len(data)} integers, one per image, got "
                         f"{labels.dtype} {labels.shape}")
    return data, labels.astype(np.int64)


def _download(name: str, root: Path, train: bool) -> None:
    try:
        import torchvision
    except ImportError:
        raise RuntimeError(
            f"load_{name.lower()} needs torchvision to download {name}, which is not installed; "
            "use scorelab.data.load_digits() (offline 8x8 digits) instead, "
            "or `pip install torchvision` where a network is available"
        ) from None
    try:
        getattr(torchvision.datasets, name)(str(root), train=train, download=True)
    except (OSError, RuntimeError) as error:
        raise RuntimeError(
            f"could not download {name} into {str(root)!r} ({error}); without a network use "
            "scorelab.data.load_digits() (offline 8x8 digits) instead"
        ) from error


def _image_dataset(name: str, reader, root, train: bool, download: bool, return_labels: bool):
    root = Path(root)
    found = reader(root, train)
    if found is None and download:
        _download(name, root, train)
        found = reader(root, train)
    if found is None:
        raise RuntimeError(
            f"{name} is not in {str(root)!r} (torchvision's layout) and download=False; "
            "download it where a network exists, or use scorelab.data.load_digits() "
            "(offline 8x8 digits) instead"
        )
    pixels, labels = found  # uint8 (N, C, H, W), int64 (N,)
    images = pixels.float() / 255.0
    return (images, labels) if return_labels else images


def load_mnist(root="data", *, train: bool = True, download: bool = True,
               return_labels: bool = False):
    """MNIST, (N, 1, 28, 28) in [0, 1] (60,000 train or 10,000 test images).

    Read from the IDX files in ``root/MNIST/raw`` (the layout torchvision's ``MNIST`` writes,
    plain or gzipped); when they are missing and ``download`` is true, torchvision fetches
    them first. With ``return_labels``, a pair (images, LongTensor (N,)).
    """
    return _image_dataset("MNIST", _read_mnist, root, train, download, return_labels)


def load_cifar10(root="data", *, train: bool = True, download: bool = True,
                 return_labels: bool = False):
    """CIFAR-10, (N, 3, 32, 32) in [0, 1] (50,000 train or 10,000 test images).

    Read from the pickled batches in ``root/cifar-10-batches-py`` (the layout torchvision's
    ``CIFAR10`` writes); when they are missing and ``download`` is true, torchvision fetches
    them first. With ``return_labels``, a pair (images, LongTensor (N,)).
    """
    return _image_dataset("CIFAR10", _read_cifar10, root, train, download, return_labels)
