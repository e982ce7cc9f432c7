"""soft_weight_sharing retraining on a data loader (``train_loader``).

The oracle is the same pipeline on tensors: a list of the very mini-batches the tensor run
draws (``batch_indices``) must give the same network, bits and accuracies; epochs and N are
counted by hand from the loader.
"""

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from bayes_sws.compress.pipeline import (
    SHARING_PRECISION_PRIOR,
    SLAB_PRECISION_PRIOR,
    soft_weight_sharing,
)
from bayes_sws.infer.svi import batch_indices
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import mlp
from bayes_sws.zoo.training import train

BATCH, SEED = 64, 3
SETTINGS = {  # the anneal (its default window) and codebook fine-tuning, a short run
    "prior_scale": 0.1,
    "mixture_lr": 1e-2,
    "batch_size": BATCH,
    "precision_prior": SLAB_PRECISION_PRIOR,
    "precision_prior_final": SHARING_PRECISION_PRIOR,
    "finetune_epochs": 1,
    "seed": SEED,
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", standardize=False)


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    net = mlp([digits.num_features, 32, digits.num_classes])
    train(net, digits.x_train, digits.y_train, num_epochs=20, batch_size=64, seed=0)
    return net


def test_a_list_of_the_tensor_runs_batches_retrains_as_the_tensor_run(digits, pretrained):
    # three epochs of the tensor run's batches as one pass of a list: epochs (and so the
    # anneal's default window, half-way to 90 %) count passes of the loader
    per_epoch = digits.num_train // BATCH
    steps = 3 * per_epoch
    batches = []
    for step in range(steps):
        index = batch_indices(digits.num_train, BATCH, step, SEED)
        batches.append((digits.x_train[index], digits.y_train[index]))
    on_tensors = soft_weight_sharing(pretrained, digits, num_epochs=3, **SETTINGS)
    on_loader = soft_weight_sharing(
        pretrained, digits, num_epochs=1, train_loader=batches, **SETTINGS
    )
    assert on_loader.fit.config["num_steps"] == on_tensors.fit.config["num_steps"] == steps
    assert on_loader.fit.config["num_data"] == digits.num_train  # a list: data's count
    for (name, a), (_, b) in zip(
        on_tensors.net.state_dict().items(), on_loader.net.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert on_loader.storage.total_bits == on_tensors.storage.total_bits
    assert on_loader.test_accuracy_after == on_tensors.test_accuracy_after
    assert on_loader.config["anneal_epochs"] == pytest.approx([0.5, 0.9])
    assert on_tensors.config["anneal_epochs"] == pytest.approx([1.5, 2.7])


def test_a_data_loader_sets_the_steps_and_n(digits, pretrained):
    dataset = TensorDataset(digits.x_train[:1000], digits.y_train[:1000])
    loader = DataLoader(dataset, batch_size=100, shuffle=True)
    result = soft_weight_sharing(
        pretrained, digits, num_epochs=2, train_loader=loader, **{**SETTINGS, "finetune_epochs": 0}
    )
    assert result.fit.config["num_steps"] == 2 * 10  # 1,000 points in batches of 100, twice
    assert result.fit.config["num_data"] == 1000  # the loader's dataset, not data's 1,437
    assert result.fit.config["batch_size"] == 100


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(64), torch.tensor(0)


def test_train_loader_is_checked_before_retraining(digits, pretrained):
    batches = [(digits.x_train[:BATCH], digits.y_train[:BATCH])]
    with pytest.raises(ValueError, match="distill=0.5 with a train_loader"):
        soft_weight_sharing(pretrained, digits, train_loader=batches, distill=0.5)
    with pytest.raises(TypeError, match="iterator"):
        soft_weight_sharing(pretrained, digits, train_loader=iter(batches))
    with pytest.raises(TypeError, match="train_loader must be a torch.utils.data.DataLoader"):
        soft_weight_sharing(pretrained, digits, train_loader=digits.x_train)
    with pytest.raises(TypeError, match=r"has no len\(\)"):
        soft_weight_sharing(pretrained, digits, train_loader=DataLoader(_Stream(), batch_size=None))
