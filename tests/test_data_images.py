"""MNIST and CIFAR-10 read offline from small files in their real on-disk formats.

The test writes files exactly as torchvision's dataset classes leave them after a download
(IDX files under MNIST/raw, pickled batches under cifar-10-batches-py) and reads them back.
"""

import gzip
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from scorelab.data import load_cifar10, load_mnist, read_idx


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist(root, n_train=6, n_test=4, compress=False):
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    made = {}
    for train, n in ((True, n_train), (False, n_test)):
        prefix = "train" if train else "t10k"
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        made[train] = images, labels
    return made


def make_cifar10(root, per_batch=3):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    made = {}
    for train, names in ((True, [f"data_batch_{i}" for i in range(1, 6)]), (False, ["test_batch"])):
        data, labels = [], []
        for name in names:
            batch = {"batch_label": name, "labels": rng.integers(0, 10, per_batch).tolist(),
                     "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                     "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
            with open(folder / name, "wb") as handle:
                pickle.dump(batch, handle, protocol=2)
            data.append(batch["data"])
            labels += batch["labels"]
        made[train] = np.concatenate(data), np.array(labels)
    return made


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_idx_files_as_torchvision_leaves_them(tmp_path, compress):
    made = make_mnist(tmp_path, compress=compress)
    for train in (True, False):
        images, labels = load_mnist(tmp_path, train=train, download=False, return_labels=True)
        expected_images, expected_labels = made[train]
        assert images.shape == (len(expected_labels), 1, 28, 28) and images.dtype == torch.float32
        assert torch.equal(images[:, 0] * 255, torch.from_numpy(expected_images).float())
        assert torch.equal(labels, torch.from_numpy(expected_labels.astype(np.int64)))
        assert 0 <= images.min() and images.max() <= 1


def test_cifar10_reads_the_pickled_batches(tmp_path):
    made = make_cifar10(tmp_path)
    for train, n in ((True, 15), (False, 3)):
        images, labels = load_cifar10(tmp_path, train=train, download=False, return_labels=True)
        data, expected_labels = made[train]
        assert images.shape == (n, 3, 32, 32)
        # The 3072 bytes of a row are the red, green and blue planes, each 32x32 row-major.
        assert torch.equal(images[1, 2, 0, :] * 255, torch.from_numpy(data[1, 2048:2080]).float())
        assert torch.equal(labels, torch.from_numpy(expected_labels))


def test_missing_files_without_download_name_the_offline_alternative(tmp_path):
    for loader in (load_mnist, load_cifar10):
        with pytest.raises(RuntimeError, match="download=False.*load_digits"):
            loader(tmp_path, download=False)


@pytest.mark.parametrize("loader", [load_mnist, load_cifar10])
def test_download_without_torchvision_names_the_offline_alternative(loader, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without torchvision
    with pytest.raises(RuntimeError, match="needs torchvision.*load_digits"):
        loader(root=str(tmp_path))


def test_a_truncated_or_foreign_file_is_a_clear_error(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist(tmp_path, download=False)


def _write_cifar_batch(root, batch):
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


@pytest.mark.parametrize("batch, match", [
    ({"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2]}, "'labels' must be 3 integers"),
    ({"data": np.zeros((3, 3072)), "labels": [1, 2, 3]}, "'data' must be bytes"),
    ({"data": np.zeros((3, 1000), np.uint8), "labels": [1, 2, 3]}, r"'data' must be bytes of shape \(n, 3072\)"),
    ({"data": np.zeros((3, 3072), np.uint8)}, "must hold a dict with 'data' and 'labels'"),
], ids=["labels short", "float data", "wrong width", "no labels"])
def test_a_cifar_batch_whose_parts_disagree_is_refused(tmp_path, batch, match):
    make_cifar10(tmp_path)
    _write_cifar_batch(tmp_path, batch)
    with pytest.raises(ValueError, match=match):
        load_cifar10(tmp_path, train=False, download=False)


def test_a_corrupt_cifar_batch_is_named(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(ValueError, match="test_batch is corrupt or not a CIFAR-10 batch"):
        load_cifar10(tmp_path, train=False, download=False)


def test_idx_files_that_disagree_are_refused(tmp_path):
    make_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))  # 6 images, 5 labels
    with pytest.raises(ValueError, match=r"N labels, got uint8 \(6, 28, 28\) and \(5,\)"):
        load_mnist(tmp_path, download=False)
    path = raw / "short"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))  # three sizes announced, half of one present
    with pytest.raises(ValueError, match="truncated: its header announces 3 sizes"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">i", 2) + bytes(5))
    with pytest.raises(ValueError, match="has bytes past its data"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">i", 2) + np.array([1.5, -2], ">f4").tobytes())
    assert torch.from_numpy(read_idx(path)).tolist() == [1.5, -2.0]  # big-endian floats, native now
    (raw / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bad.gz is not a readable gzip file"):
        read_idx(raw / "bad.gz")


def test_a_cifar_batch_cannot_run_code_on_load(tmp_path):
    make_cifar10(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": Payload(), "labels": []}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="only arrays"):
        load_cifar10(tmp_path, train=False, download=False)


@pytest.mark.slow
def test_cli_trains_two_steps_on_mnist_files(tmp_path):
    make_mnist(tmp_path / "data", n_train=16)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "scorelab.ncsn", "train", "--dataset", "mnist",
               "--data-root", str(tmp_path / "data"), "--out", str(out), "--steps", "2",
               "--batch-size", "4", "--ngf", "4", "--threads", "1", "--checkpoint-every", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert any(out.glob("*.pt")), sorted(p.name for p in out.iterdir())
