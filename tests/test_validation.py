"""One validation module (``bayes_sws.validation``): bad values are refused before
anything runs, with one error type and one wording wherever they enter; numpy scalars
pass wherever Python numbers do; damaged or hostile data files are refused by name
before large arrays are allocated.

Oracles: hand-written expected messages, ``math.isfinite``/``isinstance`` for the
property tests, numpy/torch/Pyro's own seeding functions for the seed range, and a run
with plain Python ints for every run given numpy ints.
"""

import io
import math
import zipfile

import numpy as np
import pyro
import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import bayes_sws as sws
from bayes_sws import validation
from bayes_sws.compress.pipeline import soft_weight_sharing
from bayes_sws.compress.storage import storage_report
from bayes_sws.infer.mcmc import sample_nuts
from bayes_sws.runs.demo import run_demo
from bayes_sws.zoo.data import MAX_CLASSES, DataError, load_dataset
from bayes_sws.zoo.nets import mlp
from bayes_sws.zoo.training import train

_GENERATOR = torch.Generator().manual_seed(0)
X, Y = torch.randn(10, 4, generator=_GENERATOR), torch.randint(0, 3, (10,), generator=_GENERATOR)


def _model(**prior):
    return sws.SWSModel(torch.nn.Sequential(torch.nn.Linear(4, 3)), sws.MixturePrior(3, **prior))


def _linear(**kwargs):
    return sws.SWSModel(torch.nn.Linear(2, 2), sws.MixturePrior(2), **kwargs)


# ------------------------------------------------------------------------- the public API
REFUSED = [
    (
        lambda: sws.MixturePrior(3, flat="false"),
        TypeError,
        "flat must be True or False, got 'false' (str)",
    ),
    (lambda: sws.MixturePrior(3, flat=1), TypeError, "flat must be True or False, got 1 (int)"),
    (
        lambda: sws.MixturePrior(3, zero_component="no"),
        TypeError,
        "zero_component must be True or False, got 'no' (str)",
    ),
    (
        lambda: sws.MixturePrior(3, ordered_means="yes"),
        TypeError,
        "ordered_means must be True or False",
    ),
    (
        lambda: sws.MixturePrior(3, include_bias=None),
        TypeError,
        "include_bias must be True or False, got None",
    ),
    (
        lambda: sws.MixturePrior(3, init_means=[0.1, float("nan")]),
        ValueError,
        "init_means must be a tensor of finite numbers, got nan; first non-finite entry at index [1]",
    ),
    (
        lambda: sws.MixturePrior(3, init_means=torch.tensor([-math.inf, 0.2])),
        ValueError,
        "init_means must be a tensor of finite numbers, got -inf",
    ),
    (
        lambda: sws.MixturePrior(3, init_means="0.1 0.2"),
        TypeError,
        "init_means must be a tensor of finite numbers",
    ),
    (lambda: sws.MixturePrior(3, params=[1, 2]), TypeError, "got (1, 2)"),
    (
        lambda: sws.MixturePrior(3, params=3),
        TypeError,
        "params must be a parameter name (str) or a sequence",
    ),
    (
        lambda: sws.MixturePrior(3, pi_zero="0.3"),
        TypeError,
        "pi_zero must be a number, got '0.3' (str)",
    ),
    (
        lambda: sws.MixturePrior(3, pi_zero=float("nan")),
        ValueError,
        "pi_zero must be finite, got nan",
    ),
    (lambda: sws.MixturePrior(np.int64(0)), ValueError, "num_components must be >= 1, got 0"),
    (
        lambda: _linear(prior_scale=True),
        TypeError,
        "prior_scale (λ) must be a number >= 0, got True (bool)",
    ),
    (
        lambda: _linear(prior_scale="0.1"),
        TypeError,
        "prior_scale (λ) must be a number >= 0, got '0.1' (str)",
    ),
    (
        lambda: _linear(prior_scale=-np.float32(0.5)),
        ValueError,
        "prior_scale (λ) must be a finite number >= 0, got -0.5; λ = 1 is the plain Bayesian model",
    ),
    (
        lambda: sws.fit(_model(), X, Y, seed=-1),
        ValueError,
        "seed must be an integer, got -1; seeds must lie in",
    ),
    (
        lambda: sws.fit(_model(), X, Y, seed=2**32),
        ValueError,
        "got 4294967296; seeds must lie in [0, 2**32 - 1]",
    ),
    (
        lambda: sws.fit(_model(), X, Y, num_steps=3.0),
        TypeError,
        "num_steps must be an integer > 0, got 3.0 (float)",
    ),
    (
        lambda: sws.fit(_model(), X, Y, max_rollbacks="2"),
        TypeError,
        "max_rollbacks must be an integer >= 0",
    ),
    (
        lambda: train(mlp([4, 3]), X, Y, lr="0.1"),
        TypeError,
        "lr must be a number > 0, got '0.1' (str)",
    ),
    (
        lambda: train(mlp([4, 3]), X, Y, batch_size=4.0),
        TypeError,
        "batch_size must be an integer >= 1, got 4.0",
    ),
    (
        lambda: sample_nuts(_model(), X, Y, target_accept_prob=1.0),
        ValueError,
        "target_accept_prob must be a finite number in (0, 1), got 1.0; 0.8 is the default",
    ),
    (
        lambda: sample_nuts(_model(), X, Y, num_chains=True),
        TypeError,
        "num_chains must be an integer >= 1, got True",
    ),
    (
        lambda: load_dataset("digits", flatten="false"),
        DataError,
        "flatten must be True or False, got 'false' (str)",
    ),
    (
        lambda: load_dataset("digits", test_fraction="0.2"),
        DataError,
        "test_fraction must be a number, got '0.2'",
    ),
]


@pytest.mark.parametrize(
    "make, error, message", REFUSED, ids=[f"refused{i}" for i in range(len(REFUSED))]
)
def test_bad_values_are_refused_with_one_named_error(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def _message(make):
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("seed", ["1", 1.5, True, None, -3, 2**40])
def test_a_bad_seed_gets_the_same_error_wherever_it_enters(seed):
    fit_error = _message(lambda: sws.fit(_model(), X, Y, num_steps=1, seed=seed))
    assert _message(lambda: train(mlp([4, 3]), X, Y, num_epochs=1, seed=seed)) == fit_error
    assert _message(lambda: sample_nuts(_model(), X, Y, num_samples=1, seed=seed)) == fit_error
    assert _message(lambda: run_demo(num_steps=1, seed=seed)) == fit_error
    # the data loader raises its own DataError (a ValueError) with the same words
    with pytest.raises(DataError) as info:
        load_dataset("digits", seed=seed)
    assert str(info.value) == fit_error[1]


def test_a_single_parameter_name_is_one_name_not_its_characters():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    prior = sws.MixturePrior(3, params="0.weight")
    assert prior.params == ("0.weight",)
    assert sws.SWSModel(net, prior).prior_param_names == ("0.weight",)
    as_list = storage_report(net, param_names=["0.weight"])
    assert storage_report(net, param_names="0.weight") == as_list


def test_numpy_integers_work_like_python_integers():
    """Each numpy-int run equals the same run with Python ints (the oracle)."""
    runs = {}
    for kind in (int, np.int64):
        pyro.set_rng_seed(0)
        result = sws.fit(_model(), X, Y, num_steps=kind(4), batch_size=kind(4), seed=kind(3))
        net = mlp([4, 3])
        torch.manual_seed(0)
        torch.nn.init.normal_(net[0].weight)
        trained = train(net, X, Y, num_epochs=kind(2), batch_size=kind(4), seed=kind(5))
        runs[kind] = (result.losses, trained.losses)
    assert_close(runs[np.int64][0], runs[int][0])
    assert_close(runs[np.int64][1], runs[int][1])


def test_soft_weight_sharing_takes_a_numpy_batch_size():
    torch.manual_seed(0)
    net = mlp([4, 8, 3])
    data = (X, Y, X[:4], Y[:4])
    results = [
        soft_weight_sharing(net, data, num_components=3, num_steps=3, batch_size=size, seed=1)
        for size in (4, np.int64(4))
    ]
    assert_close(results[1].compression_rate, results[0].compression_rate)
    for a, b in zip(results[0].net.parameters(), results[1].net.parameters(), strict=True):
        assert_close(a, b)


# ------------------------------------------------------------------------- data files
def _npy_bytes(array, *, shape=None):
    """An .npy file for ``array`` whose header may claim another ``shape``."""
    header = {
        "descr": np.lib.format.dtype_to_descr(array.dtype),
        "fortran_order": False,
        "shape": array.shape if shape is None else shape,
    }
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + array.tobytes()


def _write_npz(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for key, data in members.items():
            archive.writestr(f"{key}.npy", data)


def test_a_truncated_npz_is_refused_by_name(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, x=np.random.default_rng(0).random((50, 3)), y=np.arange(50) % 2)
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(
        DataError, match=r"cut\.npz' cannot be read: it is not an \.npz \(zip\) archive"
    ):
        load_dataset(path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_header_claiming_a_huge_shape_is_refused_before_loading(tmp_path, compression):
    path = tmp_path / "huge.npz"
    x = np.zeros((20, 3))
    _write_npz(
        path,
        {"x": _npy_bytes(x, shape=(10**12, 3)), "y": _npy_bytes(np.arange(20) % 2)},
        compression,
    )
    with pytest.raises(DataError) as info:
        load_dataset(path)
    claimed = 10**12 * 3 * 8  # hand count: shape x itemsize
    assert "huge.npz': array 'x' claims shape (1000000000000, 3)" in str(info.value)
    assert f"({claimed} bytes) but holds {x.nbytes} bytes" in str(info.value)


def test_an_npy_member_cut_short_is_refused(tmp_path):
    path = tmp_path / "short.npz"
    x = np.ones((20, 3))
    _write_npz(path, {"x": _npy_bytes(x)[:-40], "y": _npy_bytes(np.arange(20) % 2)})
    with pytest.raises(
        DataError, match=r"array 'x' claims shape \(20, 3\) of float64 \(480 bytes\) but holds 440"
    ):
        load_dataset(path)


def test_huge_class_labels_are_refused_before_any_one_hot(tmp_path):
    path = tmp_path / "labels.npz"
    y = np.arange(20) % 2
    y[3] = 10**9
    np.savez(path, x=np.zeros((20, 3)), y=y)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(
        "labels: y has class label 1000000000, i.e. 1000000001 classes for 20"
    )
    assert f"K at most {MAX_CLASSES}" in message


def test_sparse_but_modest_labels_still_load(tmp_path):
    path = tmp_path / "few.npz"
    y = np.r_[np.zeros(10, dtype=int), np.full(10, 9)]  # classes 0 and 9 only: 10 classes
    np.savez(path, x=np.random.default_rng(1).random((20, 3)), y=y)
    assert load_dataset(path).num_classes == 10


# ------------------------------------------------------------------------- the checks themselves
REALS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.floats(width=32).map(np.float32),
    st.integers(-(2**62), 2**62).map(np.int64),
    st.booleans().map(np.bool_),
    st.complex_numbers(max_magnitude=10),
)
BOUND = st.one_of(st.none(), st.floats(-10, 10))


def _is_real(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


@settings(max_examples=300, deadline=None)
@given(value=REALS, low=BOUND, high=BOUND, low_open=st.booleans(), high_open=st.booleans())
def test_check_real_agrees_with_an_independent_oracle(value, low, high, low_open, high_open):
    bounds = {"low": low, "high": high, "low_open": low_open, "high_open": high_open}
    if not _is_real(value):
        with pytest.raises(TypeError, match=r"^x must be a number.*, got .* \(\w+\)$"):
            validation.check_real("x", value, **bounds)
        return
    number = float(value)
    inside = math.isfinite(number)
    if low is not None:
        inside = inside and (number > low if low_open else number >= low)
    if high is not None:
        inside = inside and (number < high if high_open else number <= high)
    if not inside:
        with pytest.raises(ValueError, match=r"^x must be (a finite number|finite).*, got "):
            validation.check_real("x", value, **bounds)
        return
    result = validation.check_real("x", value, **bounds)
    assert type(result) is float and result == number


@settings(max_examples=300, deadline=None)
@given(
    value=REALS,
    low=st.one_of(st.none(), st.integers(-5, 5)),
    high=st.one_of(st.none(), st.integers(-5, 5)),
)
def test_check_int_agrees_with_an_independent_oracle(value, low, high):
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not integer:
        with pytest.raises(TypeError, match=r"^n must be an integer.*, got .* \(\w+\)$"):
            validation.check_int("n", value, low=low, high=high)
        return
    if (low is not None and int(value) < low) or (high is not None and int(value) > high):
        with pytest.raises(ValueError, match=r"^n must be an integer.*, got -?\d+$"):
            validation.check_int("n", value, low=low, high=high)
        return
    result = validation.check_int("n", value, low=low, high=high)
    assert type(result) is int and result == int(value)


def test_the_seed_range_is_what_numpy_torch_and_pyro_all_accept():
    for seed in (0, validation.SEED_MAX):
        np.random.seed(seed)
        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        assert validation.check_seed("seed", np.uint32(seed)) == seed
    for seed in (-1, validation.SEED_MAX + 1):
        with pytest.raises(ValueError):
            np.random.seed(seed)  # the narrowest of the three
        with pytest.raises(ValueError, match=r"seeds must lie in \[0, 2\*\*32 - 1\]"):
            validation.check_seed("seed", seed)
    pyro.set_rng_seed(0)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0.weight", ("0.weight",)),
        (["a", "b"], ("a", "b")),
        (("a",), ("a",)),
        (np.array(["a", "b"]), ("a", "b")),
        (None, None),
    ],
)
def test_check_names_accepts_one_name_or_many(value, expected):
    names = validation.check_names("params", value)
    assert names == expected
    assert names is None or all(type(n) is str for n in names)


@pytest.mark.parametrize("value", [3, b"ab", ["a", 1], [None]])
def test_check_names_refuses_non_strings(value):
    with pytest.raises(TypeError, match="params must be a parameter name"):
        validation.check_names("params", value)


def test_check_bool_takes_only_booleans():
    assert validation.check_bool("flag", np.bool_(True)) is True
    assert validation.check_bool("flag", False) is False
    for value in ("false", 0, 1.0, None):
        with pytest.raises(TypeError, match=r"^flag must be True or False, got "):
            validation.check_bool("flag", value)


def test_the_gaussian_likelihood_uses_the_same_checks():
    for value in (True, "1.0"):
        with pytest.raises(TypeError, match=r"^precision must be a number > 0, got .* \(\w+\)$"):
            sws.Gaussian(precision=value)
    with pytest.raises(TypeError, match="learn_precision must be True or False, got 'no'"):
        sws.Gaussian(learn_precision="no")
    assert sws.Gaussian(precision=np.float32(4.0)).precision == 4.0


def test_a_damaged_npz_is_one_line_at_the_cli_and_nothing_is_written(tmp_path, capsys):
    from bayes_sws.runs import cli

    path = tmp_path / "cut.npz"
    np.savez(path, x=np.zeros((50, 3)), y=np.arange(50) % 2)
    path.write_bytes(path.read_bytes()[:700])
    code = cli.main(["fit", "--data", str(path), "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("bayes-sws: error: ")
    assert "cut.npz' cannot be read: it is not an .npz (zip) archive" in err
    assert not (tmp_path / "run").exists()
