"""``SWSLightningModule`` trains what :func:`bayes_sws.fit` trains, batch for batch.

Oracles: :func:`bayes_sws.fit` on the same batches (:func:`batch_indices`) for
``guide="map"``; Pyro's ``Trace_ELBO`` of the model given *all* the data and the
batch's indices (the model's own ``pyro.plate(N, subsample=...)`` scaling, the
tensor path) at the same parameters and random state for variational guides;
the same with the union of two processes' batches for the data-parallel scaling.
"""

import copy
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close
from pyro.infer import Trace_ELBO

import bayes_sws as sws
from bayes_sws.infer import batch_indices, local_params

N, B, SEED = 48, 16, 3


def _setup(guide="map"):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return x, y, net.double()


def _model(net, tensor_scales=None):
    return sws.SWSModel(
        copy.deepcopy(net), sws.MixturePrior(4), prior_scale=0.7, tensor_scales=tensor_scales
    )


def _loader(x, y, num_steps):
    """The batches of ``fit(batch_size=B, seed=SEED)``, one per step."""

    class Steps(torch.utils.data.Sampler):
        def __iter__(self):
            for step in range(num_steps):
                yield batch_indices(N, B, step, SEED).tolist()

        def __len__(self):
            return num_steps

    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_sampler=Steps())


def _trainer(pl, num_steps, callbacks=()):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=num_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize("tensor_scales", [None, {"2.weight": 3.0}])
def test_map_losses_equal_fit_step_for_step(tensor_scales):
    pl = pytest.importorskip("lightning.pytorch")
    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y, net = _setup()
    num_steps = 12
    expected = sws.fit(
        _model(net, tensor_scales), x, y, "map", num_steps=num_steps, batch_size=B, seed=SEED,
        lr=1e-2, mixture_lr=5e-3, collapse_threshold=None,
    )  # fmt: skip
    module = SWSLightningModule(_model(net, tensor_scales), "map", lr=1e-2, mixture_lr=5e-3)
    _trainer(pl, num_steps).fit(module, _loader(x, y, num_steps))
    assert module.num_data == N  # from the DataLoader's dataset
    assert_close(module.losses, expected.losses, rtol=1e-12)
    result = module.to_result()
    for mine, theirs in zip(result.mixture(), expected.mixture()):
        assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    for key in ("prior_scale", "tensor_scales", "lr", "mixture_lr", "num_data"):
        assert result.config[key] == expected.config[key], key


@pytest.mark.parametrize("guide", ["normal", "mixed", "lowrank"])
def test_variational_loss_per_step_equals_the_tensor_path(guide):
    pl = pytest.importorskip("lightning.pytorch")
    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y, net = _setup()
    num_steps = 5
    module = SWSLightningModule(_model(net), guide, num_data=N, lr=1e-2)
    expected = []

    class Oracle(pl.Callback):
        """Before each step: the same RNG state through the model given all data + indices."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state = torch.get_rng_state()
            index = batch_indices(N, B, len(expected), SEED)
            with local_params(), torch.no_grad():
                loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
                    pl_module.model, pl_module.guide, x, y, index
                )
            expected.append(float(loss))
            torch.set_rng_state(state)

    _trainer(pl, num_steps, [Oracle()]).fit(module, _loader(x, y, num_steps))
    assert len(module.losses) == num_steps
    assert module.fast_elbo  # without Pyro's tracing; the oracle is Trace_ELBO's
    assert_close(module.losses, expected, rtol=1e-12)
    assert len(set(module.losses)) == num_steps  # the parameters did move


def _oracle_loss_and_grads(module, x, y, index):
    """Pyro's ``Trace_ELBO`` of the model given all the data and the batch's indices."""
    module.zero_grad()
    with local_params():
        loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
            module.model, module.guide, x, y, index
        )
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("guide", ["map", "normal", "mixed", "lowrank"])
def test_batch_loss_and_gradients_equal_trace_elbo_on_the_subsampled_plate(guide):
    """``module.loss(x[b], y[b])`` with ``num_data=N``: the ``N/B``-scaled ELBO of the batch,
    its gradients those of the model's ``pyro.plate(N, subsample=b)`` on all the data."""
    pytest.importorskip("lightning.pytorch")
    from bayes_sws.infer.fastmap import supports_fast_map
    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y, net = _setup()
    module = SWSLightningModule(_model(net), guide, num_data=N)
    with local_params():
        assert module.fast_map == (guide == "map") == supports_fast_map(module.model, module.guide)
        assert module.fast_elbo == (guide != "map")
    index = batch_indices(N, B, 2, SEED)
    state = torch.get_rng_state()
    expected, expected_grads = _oracle_loss_and_grads(module, x, y, index)
    torch.set_rng_state(state)  # the same draw of the variational guides' weights
    module.zero_grad()
    loss = module.loss(x[index], y[index])
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert_close(float(loss.detach()), expected, rtol=1e-12)
    assert len(grads) == len(expected_grads) > 0
    for mine, theirs in zip(grads, expected_grads):
        assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_a_batch_larger_than_the_data_set_is_refused():
    pytest.importorskip("lightning.pytorch")
    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y, net = _setup()
    module = SWSLightningModule(_model(net), "map", num_data=B)
    with pytest.raises(ValueError, match=f"more than num_data={B}"):
        module.loss(x[: B + 1], y[: B + 1])


@pytest.mark.parametrize(("processes", "batch"), [(1, B), (2, B), (3, 12)])
def test_processes_average_to_the_union_batch(processes, batch):
    pytest.importorskip("lightning.pytorch")
    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y, net = _setup()
    module = SWSLightningModule(_model(net), "map", num_data=N)
    halves = batch_indices(N, processes * batch, 0, SEED).split(batch)  # what each rank sees
    grads = []
    for index in halves:
        module.zero_grad()
        module.loss(x[index], y[index]).backward()
        grads.append([p.grad.clone() for p in module.guide.parameters()])
    module.zero_grad()
    with local_params():
        union = torch.cat(halves)
        Trace_ELBO(max_plate_nesting=1).differentiable_loss(
            module.model, module.guide, x, y, union
        ).backward()
    for *mine, theirs in zip(*grads, [p.grad for p in module.guide.parameters()]):
        assert_close(sum(mine) / processes, theirs, rtol=1e-10, atol=1e-12)


def test_compress_and_arviz_take_the_result():
    pl = pytest.importorskip("lightning.pytorch")
    from sklearn.metrics import accuracy_score

    from bayes_sws.compress.pipeline import compress_result
    from bayes_sws.diagnostics import to_inference_data
    from bayes_sws.integrations.lightning import SWSLightningModule

    x, y, net = _setup()
    module = SWSLightningModule(_model(net), "normal", lr=1e-2)
    _trainer(pl, 3).fit(module, _loader(x, y, 3))
    result = module.to_result()
    compressed = compress_result(result, x, y)
    with torch.no_grad():
        accuracy = accuracy_score(y.numpy(), result.map_network()(x).argmax(-1).numpy())
    assert compressed.test_accuracy_before == pytest.approx(accuracy, abs=1e-12)
    idata = to_inference_data(result, x, y, num_samples=8, num_chains=2)
    assert idata.posterior["sws.mu"].shape == (2, 4, 4)
    assert idata.log_likelihood["obs"].shape[-1] == N


def test_missing_lightning_names_the_extra(monkeypatch):
    import bayes_sws.integrations.lightning as integration

    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    integration._module_class.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'bayes-sws\[lightning\]'"):
            integration.SWSLightningModule  # noqa: B018
    finally:
        integration._module_class.cache_clear()


def test_bad_arguments_are_named():
    pytest.importorskip("lightning.pytorch")
    from bayes_sws.integrations.lightning import SWSLightningModule

    with pytest.raises(TypeError, match="SWSModel"):
        SWSLightningModule(torch.nn.Linear(2, 2))
    net = _setup()[2]
    with pytest.raises(ValueError, match="num_data"):
        SWSLightningModule(_model(net), num_data=0)
    with pytest.raises(ValueError, match="unknown guide"):
        SWSLightningModule(_model(net), "nope")


def test_readme_lightning_snippet_runs():
    pytest.importorskip("lightning.pytorch")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- own-loop-lightning -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md lost its '<!-- own-loop-lightning -->' python block"
    namespace: dict = {}
    exec(compile(block.group(1), "README Lightning", "exec"), namespace)
    module = namespace["module"]
    assert module.num_data == 256  # the dataset's length
    assert len(module.losses) == 2 * 4  # 2 epochs of 256 / 64 batches
    assert np.isfinite(module.losses).all()
    assert isinstance(namespace["result"], sws.FitResult)


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process_on_the_union_batches(tmp_path):
    """Lightning ``strategy="ddp"``, 2 CPU processes (``ddp_worker.py``), against the
    single-process hand loop (``SoftWeightSharing``, itself equal to ``fit``) whose
    step sees both processes' batches at once: points ``[2sB, 2(s+1)B)`` in epoch steps ``s``."""
    pytest.importorskip("lightning.pytorch")
    import json
    import os
    import subprocess

    import torch.nn.functional as F

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    try:
        from ddp_worker import B as batch
        from ddp_worker import N as num_data
        from ddp_worker import problem
    finally:
        sys.path.remove(str(here))
    num_steps, out = 4, tmp_path / "ddp.json"
    env = dict(os.environ, PYTHONPATH=str(here.parents[1]))
    run = subprocess.run(
        [sys.executable, str(here / "ddp_worker.py"), str(out), "2", str(num_steps)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["world_size"] == 2

    x, y, net, prior = problem()
    penalty = sws.SoftWeightSharing(net, prior, prior_scale=0.7)
    optimizer = torch.optim.Adam(penalty.parameter_groups(lr=1e-2, mixture_lr=5e-3))
    for step in range(num_steps):
        first = 2 * batch * (step % (num_data // (2 * batch)))  # unshuffled epochs repeat
        index = torch.arange(first, first + 2 * batch)
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x[index]), y[index], reduction="sum") * num_data / len(index)
        (loss + penalty()).backward()
        optimizer.step()
    for name, value in zip(("pi", "mu", "sigma"), penalty.mixture()):
        assert_close(record[name], value, rtol=1e-9, atol=1e-12, msg=name)
