"""``fit`` on a ``DataLoader`` (or any re-iterable of ``(x, y)`` batches).

Oracles: the tensor path (the same batches, picked by ``batch_indices`` from
in-memory tensors), the hand-written objective N/B·CE + λΩ (5.139), an
uninterrupted run for resuming, and counts of the points read for "the data
never has to fit in memory"."""

import copy
import io
import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from pyro.infer import Trace_ELBO
from torch.func import functional_call
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    TensorDataset,
)

import bayes_sws as sws
from bayes_sws.core.likelihoods import Categorical
from bayes_sws.infer import fastmap
from bayes_sws.infer.loaders import BatchStream, ReplayWarning
from bayes_sws.infer.svi import FitState, NumericalFault, SVIEngine, batch_indices, local_params

N, B, SEED = 60, 16, 5
X = torch.randn(N, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(2))


def _model(**prior):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    prior = {"zero_component": False, **prior}
    return sws.SWSModel(net.double(), sws.MixturePrior(3, **prior), prior_scale=0.5)


class DocumentedOrder(Sampler):
    """The batches ``fit`` draws from tensors, written out by hand: one seeded
    permutation per epoch cut into whole batches (the docstring of ``batch_indices``)."""

    def __init__(self, num_data, batch_size, seed):
        self.num_data, self.batch_size, self.seed, self.epoch = num_data, batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_data // self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_data, generator=generator)
        for j in range(len(self)):
            yield perm[j * self.batch_size : (j + 1) * self.batch_size].tolist()


def _documented_loader():
    # a generator of its own, so building the loader's iterator leaves the global RNG alone
    return DataLoader(
        TensorDataset(X, Y),
        batch_sampler=DocumentedOrder(N, B, SEED),
        generator=torch.Generator().manual_seed(0),
    )


def _params(result):
    with local_params():
        state = {k: v.detach().clone() for k, v in result.guide.state_dict().items()}
    state.update({k: v.detach().clone() for k, v in result.model.net.state_dict().items()})
    return state


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------------------- the tensor path
def test_the_sampler_yields_the_batches_of_batch_indices():
    loader = _documented_loader()
    loader.batch_sampler.set_epoch(1)
    for position, batch in enumerate(loader.batch_sampler):
        step = 1 * (N // B) + position
        assert batch == batch_indices(N, B, step, SEED).tolist()


@pytest.mark.parametrize("guide", ["map", "normal", "mixed"])
def test_loader_fit_equals_the_tensor_fit_on_the_same_batches(guide):
    """Two and a half epochs: every loss and every final parameter bit for bit."""
    settings = {"guide": guide, "num_steps": 9, "lr": 1e-2, "seed": SEED}
    tensors = sws.fit(_model(), X, Y, batch_size=B, **settings)
    loader = sws.fit(_model(), _documented_loader(), **settings)
    np.testing.assert_array_equal(loader.losses, tensors.losses)
    _assert_same_params(_params(loader), _params(tensors))
    assert loader.config["num_data"] == N and loader.config["input_shape"] == [4]


@pytest.mark.parametrize("guide", ["map", "normal"])
def test_batch_loss_and_gradients_equal_the_subsampled_loss(guide):
    """The loss of a loader's batch (num_data=N) against all the data with the batch's
    indices (the plate's subsample): same value and gradients."""
    model = _model()
    engine = SVIEngine(model, X, Y, guide, batch_size=B, seed=SEED)
    engine.init()
    params = [p for _, p in engine._named_params]
    index = batch_indices(N, B, 3, SEED)

    def loss_and_grads(*args, **kwargs):
        torch.manual_seed(11)  # the ELBO's draw, the same for both
        with local_params():
            if guide == "map":
                loss = fastmap.map_loss(model, engine.guide, *args, **kwargs)
            else:
                program = model if not kwargs else lambda *a: model(*a, **kwargs)
                loss = Trace_ELBO().differentiable_loss(program, engine.guide, *args)
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    expected, expected_grads = loss_and_grads(X, Y, index)
    actual, actual_grads = loss_and_grads(X[index], Y[index], num_data=N)
    assert_close(actual, expected, rtol=1e-14)
    for a, e in zip(actual_grads, expected_grads):
        if e is None:
            assert a is None
        else:
            assert_close(a, e, rtol=1e-12, atol=1e-14)


def test_the_first_loss_is_the_scaled_objective_by_hand():
    """E(w) scaled by N / B of the loader's first batch, plus λΩ(w) (5.139, flat hyperpriors)."""
    loader = DataLoader(TensorDataset(X, Y), batch_size=B)  # in order: the first 16 points
    model = _model(flat=True)
    engine = SVIEngine(model, loader, guide="map", seed=SEED)
    engine.init()
    with local_params():
        values = {k: v.detach().clone() for k, v in engine.guide.median().items()}
    weights = {n: values[f"net.{n}"] for n in ("0.weight", "2.weight")}
    biases = {n: p.detach() for n, p in model.net.named_parameters() if "bias" in n}
    with torch.no_grad():
        output = functional_call(model.net, {**biases, **weights}, (X[:B],))
        data = F.cross_entropy(output, Y[:B], reduction="sum")
        w = torch.cat([v.reshape(-1) for v in weights.values()])
        sigma = values["sws.precisions"] ** -0.5
        omega = sws.penalty.omega(w, values["sws.mixing"], values["sws.means"], sigma)
    assert_close(engine.update(), N / B * data + 0.5 * omega, rtol=1e-12)


# ---------------------------------------------------------------------------- the data set size
def test_num_data_comes_from_the_dataset_or_the_argument():
    batches = [(X[i : i + 20], Y[i : i + 20]) for i in (0, 20, 40)]
    with pytest.raises(ValueError, match=r"num_data is None.*fit\(\.\.\., num_data=N\)"):
        sws.fit(_model(), batches, num_steps=2)
    as_list = sws.fit(_model(), batches, num_steps=4, num_data=N, seed=1)
    as_loader = sws.fit(
        _model(), DataLoader(TensorDataset(X, Y), batch_size=20), num_steps=4, seed=1
    )
    np.testing.assert_array_equal(as_list.losses, as_loader.losses)
    # a different N scales the likelihood differently
    other = sws.fit(_model(), batches, num_steps=1, num_data=2 * N, seed=1)
    assert other.losses[0] > as_list.losses[0]


class Stream(IterableDataset):
    """Points one at a time, no length: the loader's dataset cannot tell N."""

    def __iter__(self):
        return iter(zip(X, Y))


def test_an_iterable_dataset_needs_num_data_and_epochs_need_a_length():
    with pytest.raises(ValueError, match="num_data"):
        sws.fit(_model(), DataLoader(Stream(), batch_size=20), num_steps=2)
    result = sws.fit(_model(), DataLoader(Stream(), batch_size=20), num_steps=7, num_data=N)
    assert len(result.losses) == 7  # epochs of 3 batches end where the stream does
    with pytest.raises(ValueError, match=r"num_epochs.*no len\(\).*num_steps"):
        sws.fit(_model(), DataLoader(Stream(), batch_size=20), num_epochs=1, num_data=N)


def test_num_epochs_is_passes_over_the_loader():
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)  # 4 batches: 16, 16, 16, 12
    result = sws.fit(_model(), loader, num_epochs=2.5, lr=1e-2)
    assert len(result.losses) == 10 == round(2.5 * len(loader))
    assert result.config["num_steps"] == 10 and result.config["batch_size"] == 16


class Counting(Dataset):
    """A data set that counts the points read."""

    def __init__(self, size):
        self.size, self.reads = size, 0

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        self.reads += 1
        x = torch.full((4,), i / self.size, dtype=torch.float64)
        return x, i % 3


def test_only_the_batches_of_the_steps_are_read():
    data = Counting(100_000)
    sws.fit(_model(), DataLoader(data, batch_size=10, shuffle=True), num_steps=3)
    assert data.reads == 3 * 10 + 2  # three batches and the two points checked first


# ---------------------------------------------------------------------------- resuming
class Noisy(Dataset):
    """Augmentation from torch's global RNG in the main process."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return X[i] + 0.1 * torch.randn(4, dtype=torch.float64), Y[i]


def _seeded():
    return DataLoader(
        TensorDataset(X, Y), batch_size=B, shuffle=True, generator=torch.Generator().manual_seed(7)
    )


LOADERS = {
    "seeded generator": _seeded,
    "shuffle, no generator": lambda: DataLoader(TensorDataset(X, Y), batch_size=B, shuffle=True),
    "augmented": lambda: DataLoader(Noisy(), batch_size=B, shuffle=True),
    "augmented in 2 workers": lambda: DataLoader(
        Noisy(), batch_size=B, shuffle=True, num_workers=2
    ),
    "list of batches": lambda: [(X[i : i + 20], Y[i : i + 20]) for i in (0, 20, 40)],
    "whole batches, seeded sampler": lambda: DataLoader(
        TensorDataset(X, Y),
        batch_size=None,
        sampler=BatchSampler(
            RandomSampler(range(N), generator=torch.Generator().manual_seed(7)), B, False
        ),
    ),
}


def _reloaded(state):
    """Through a checkpoint file's round trip, as a new process reads it."""
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    return FitState.from_dict(torch.load(buffer, weights_only=True, map_location="cpu"))


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=pytest.mark.slow) if "workers" in kind else kind
        for kind in LOADERS
    ],  # worker processes start once per epoch: ~30 s on a busy 2-core machine
)
def test_an_interrupted_and_resumed_fit_equals_an_uninterrupted_one(kind):
    """Interrupted mid-epoch and at an epoch's end; each resumed in a fresh setting
    (a new model and loader, the global RNG moved on): bit for bit the same."""
    settings = {"guide": "normal", "num_steps": 11, "lr": 1e-2, "seed": 3, "num_data": N}
    states = []
    whole = sws.fit(
        _model(), LOADERS[kind](), checkpoint=states.append, checkpoint_every=1, **settings
    )
    steps_per_epoch = len(LOADERS[kind]())
    for stop in (2, steps_per_epoch, steps_per_epoch + 1):
        state = _reloaded(states[stop - 1])
        assert state.step == stop and state.data_state is not None
        torch.manual_seed(999)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ReplayWarning)
            resumed = sws.fit(_model(), LOADERS[kind](), initial_state=state, **settings)
        np.testing.assert_array_equal(resumed.losses, whole.losses)
        _assert_same_params(_params(resumed), _params(whole))


def test_resume_records_the_epoch_and_position():
    states = []
    sws.fit(_model(), _seeded(), num_steps=6, checkpoint=states.append, checkpoint_every=1)
    places = [(s.data_state["epoch"], s.data_state["position"]) for s in states]
    # 4 batches per epoch; after the 4th the epoch is over and the next one not begun
    assert places == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert states[3].data_state["epoch_rng"] is None
    assert len(states[0].data_state["epoch_generators"]) == 1  # the loader's generator


class Custom:
    """A re-iterable that is not a DataLoader: its order on a second pass is unknown."""

    def __iter__(self):
        return iter([(X[:30], Y[:30]), (X[30:], Y[30:])])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: DataLoader(Stream(), batch_size=20), "IterableDataset"),
        (Custom, "neither a DataLoader nor a list"),
    ],
)
def test_a_loader_that_cannot_be_replayed_warns_once_on_resume(make, reason):
    states = []
    sws.fit(_model(), make(), num_steps=5, num_data=N, checkpoint=states.append, checkpoint_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sws.fit(_model(), make(), num_steps=8, num_data=N, initial_state=_reloaded(states[0]))
    replay = [w for w in caught if issubclass(w.category, ReplayWarning)]
    assert len(replay) == 1
    message = str(replay[0].message)
    assert "\n" not in message and reason in message and "resuming at batch 1 of epoch 0" in message
    assert replay[0].filename == __file__  # attributed to the caller


def test_a_tensor_checkpoint_does_not_resume_on_a_loader():
    states = []
    sws.fit(_model(), X, Y, batch_size=B, num_steps=2, checkpoint=states.append)
    with pytest.raises(ValueError, match="fit on tensors x, y but this run reads a data loader"):
        sws.fit(_model(), _seeded(), num_steps=4, num_data=N, initial_state=states[-1])
    loader_states = []
    sws.fit(_model(), _seeded(), num_steps=2, checkpoint=loader_states.append)
    with pytest.raises(ValueError, match="fit on a data loader but this run has tensors"):
        sws.fit(_model(), X, Y, batch_size=B, num_steps=4, initial_state=loader_states[-1])


def test_rollback_reads_the_batches_again_from_the_recorded_place():
    """A NaN written into a parameter after step 5 (mid-epoch 1) is rolled back: the loader
    is read again up to the step returned to, and the run before the fault is untouched."""
    model = _model()
    fired = []

    def callback(step, loss):
        if step == 5 and not fired:
            fired.append(step)
            with torch.no_grad():
                model.net[0].bias.fill_(float("nan"))

    settings = {"num_steps": 9, "lr": 1e-2, "seed": 2}
    with pytest.warns(RuntimeWarning, match="rolled back to step 5"):
        result = sws.fit(model, _seeded(), callback=callback, on_nonfinite="rollback", **settings)
    whole = sws.fit(_model(), _seeded(), **settings)
    assert len(result.faults) == 1 and np.isfinite(result.losses).all()
    np.testing.assert_array_equal(result.losses[:6], whole.losses[:6])
    # step 5 was done again on its own batch, from the same parameters, at half the rate
    assert result.losses[6] != whole.losses[6]


# ---------------------------------------------------------------------------- results and faults
def test_predict_on_a_batch_and_faults_name_the_site():
    result = sws.fit(_model(), _documented_loader(), num_steps=4, seed=SEED)
    tensors = sws.fit(_model(), X, Y, batch_size=B, num_steps=4, seed=SEED)
    assert torch.equal(result.predict(X[:7]), tensors.predict(X[:7]))

    class Poisoned(Categorical):
        poisoned = False

        def distribution(self, output, params):
            return super().distribution(output + (float("nan") if self.poisoned else 0.0), params)

    likelihood = Poisoned()
    model = sws.SWSModel(_model().net, sws.MixturePrior(3), likelihood)

    def callback(step, loss):
        likelihood.poisoned = step == 2

    with pytest.raises(NumericalFault, match=r"step 3 \(the loss is nan\): site 'obs'"):
        sws.fit(model, _seeded(), num_steps=6, callback=callback)


# ---------------------------------------------------------------------------- refusals
def _one_pair():
    yield X[:10], Y[:10]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sws.fit(_model(), _seeded(), Y), TypeError, "without y"),
        (lambda: sws.fit(_model(), _one_pair()), TypeError, "read only once"),
        (lambda: sws.fit(_model(), [X[:10]], num_data=N), TypeError, "batch 0 .*pair \\(x, y\\)"),
        (lambda: sws.fit(_model(), _seeded(), batch_size=8), ValueError, "drop batch_size"),
        (lambda: sws.fit(_model(), _seeded(), optimizer="lbfgs"), ValueError, "tensors x, y"),
        (lambda: sws.fit(_model(), _seeded(), guide="laplace"), ValueError, "Hessian"),
        (lambda: sws.fit(_model(), X, Y, num_data=2 * N), ValueError, "num_data=120"),
        (lambda: sws.fit(_model(), X), ValueError, "y is None"),
        (lambda: sws.fit(_model(), [], num_data=N), ValueError, "no batches"),
        (lambda: sws.fit(_model(), [(X, Y)], num_data=10), ValueError, "more than num_data=10"),
        (lambda: sws.fit(_model(), [(X, Y[:5])], num_data=N), ValueError, "same number"),
    ],
)
def test_bad_loaders_are_refused_with_the_fix(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_engine_has_no_random_access_to_a_loaders_batches():
    engine = SVIEngine(_model(), _seeded())
    engine.init()
    with pytest.raises(TypeError, match="own order"):
        engine.batch(0)
    with pytest.raises(TypeError, match="engine.losses"):
        engine.loss()
    assert (
        engine.x is None and engine.loader is not None and copy.copy(engine.config)["num_data"] == N
    )


# ---------------------------------------------------------------------------- whole batches
WHOLE = {
    "seeded, drop_last": lambda: DataLoader(
        TensorDataset(X, Y),
        batch_size=B,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(7),
    ),
    "shuffle, no generator": lambda: DataLoader(TensorDataset(X, Y), batch_size=B, shuffle=True),
    "in order, last batch short": lambda: DataLoader(TensorDataset(X, Y.float()), batch_size=B),
    "indices from the end": lambda: DataLoader(
        TensorDataset(X, Y), batch_sampler=[[-1, 0, -2], [5, -N], [7]]
    ),
}


@pytest.mark.parametrize("kind", WHOLE)
def test_a_tensor_dataset_is_read_a_batch_at_a_time_as_its_loader_reads_it(kind, monkeypatch):
    """Oracle: the DataLoader's own iteration (the default collate of single points) from
    the same RNG states: the same batches bit for bit over two epochs, in the same dtypes,
    and the RNGs left where it leaves them; the stream does not read the points one by one."""
    torch.manual_seed(4)
    loader = WHOLE[kind]()
    # len(loader) batches of a fresh iterator per epoch, as the stream reads them (with
    # drop_last a for loop would also run the sampler to its end, drawing one more permutation)
    expected = [b for _ in range(2) for b in itertools.islice(iter(loader), len(loader))]
    rng_after = torch.get_rng_state()
    generator_after = loader.generator.get_state() if loader.generator else None

    getitem, indices = TensorDataset.__getitem__, []
    monkeypatch.setattr(
        TensorDataset, "__getitem__", lambda self, i: indices.append(i) or getitem(self, i)
    )
    torch.manual_seed(4)
    loader = WHOLE[kind]()
    stream = BatchStream(loader)
    read = [stream.next() for _ in range(2 * len(loader))]
    assert len(read) == len(expected) and not indices  # gathered, not read point by point
    for (x, y), (ex, ey) in zip(read, expected):
        assert x.dtype == ex.dtype and y.dtype == ey.dtype
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert torch.equal(torch.get_rng_state(), rng_after)
    if generator_after is not None:
        assert torch.equal(loader.generator.get_state(), generator_after)


def test_other_loaders_are_read_as_they_are():
    """A collate of one's own, worker processes or a subclass of TensorDataset: the loader's
    own batches (the points one by one)."""
    calls = []

    def collate(points):
        calls.append(len(points))
        return torch.utils.data.default_collate(points)

    stream = BatchStream(DataLoader(TensorDataset(X, Y), batch_size=B, collate_fn=collate))
    x, y = stream.next()
    assert calls == [B] and torch.equal(x, X[:B]) and torch.equal(y, Y[:B])


def test_whole_batches_of_a_distributed_sampler_change_order_every_epoch():
    """``DataLoader(batch_size=None, sampler=BatchSampler(DistributedSampler(...)))``: the
    sampler inside is told the epoch, as the loader's own sampler would be."""

    def make():
        inner = DistributedSampler(TensorDataset(X, Y), num_replicas=2, rank=1, seed=3)
        sampler = BatchSampler(inner, B, drop_last=False)
        return DataLoader(TensorDataset(X, Y), batch_size=None, sampler=sampler), inner

    loader, _ = make()
    stream = BatchStream(loader)
    read = [stream.next() for _ in range(2 * len(loader))]
    oracle, inner = make()
    expected = []
    for epoch in (0, 1):
        inner.set_epoch(epoch)
        expected += list(oracle)
    assert len(read) == len(expected) == 2 * 2  # 30 points of this rank in batches 16, 14
    for (x, y), (ex, ey) in zip(read, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert not torch.equal(read[0][0], read[2][0])  # epoch 1 is another order
