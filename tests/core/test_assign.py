"""``penalty.assign`` (argmax of eq. 5.140, chunked) against responsibilities computed by scipy."""

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import norm

from bayes_sws.core import penalty


def _scipy_responsibilities(w, pi, mu, sigma) -> np.ndarray:
    """γ_j(w_i) of (5.140) from scipy's normal log-density, shape (N, M)."""
    with np.errstate(divide="ignore"):  # log 0 = -inf for a component with π = 0
        log_joint = np.log(pi) + norm.logpdf(np.reshape(w, (-1, 1)), mu, sigma)
    return softmax(log_joint, axis=1)


def _assign(w, pi, mu, sigma, **kwargs) -> np.ndarray:
    args = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (w, pi, mu, sigma))
    return penalty.assign(*args, **kwargs).numpy()


@pytest.mark.parametrize("seed", range(5))
def test_assign_is_argmax_of_scipy_responsibilities(seed):
    rng = np.random.default_rng(seed)
    num_components = int(rng.integers(2, 12))
    pi = rng.dirichlet(np.ones(num_components))
    mu = np.concatenate([[0.0], rng.normal(0, 0.5, num_components - 1)])
    sigma = np.exp(rng.uniform(-6, 0, num_components))
    w = rng.normal(0, 0.6, (13, 17))
    owner = _assign(w, pi, mu, sigma)
    assert owner.shape == w.shape and owner.dtype == np.int64
    expected = _scipy_responsibilities(w, pi, mu, sigma).argmax(1)
    np.testing.assert_array_equal(owner.ravel(), expected)


def test_assign_ties_go_to_the_lowest_index():
    # components 1 and 2 are identical, and w = 0 sits midway between components 0 and 3
    pi = np.array([0.25, 0.25, 0.25, 0.25])
    mu = np.array([-0.5, 0.9, 0.9, 0.5])
    sigma = np.array([0.1, 0.1, 0.1, 0.1])
    w = np.array([0.0, 0.9, 0.91, -0.5, 0.5])
    gamma = _scipy_responsibilities(w, pi, mu, sigma)
    assert gamma[0, 0] == gamma[0, 3] and gamma[1, 1] == gamma[1, 2]  # exact ties
    expected = gamma.argmax(1)  # numpy: first maximum
    np.testing.assert_array_equal(expected, [0, 1, 1, 0, 3])
    np.testing.assert_array_equal(_assign(w, pi, mu, sigma), expected)


def test_assign_wide_collapsed_and_empty_components():
    # a very wide component, a collapsed one (σ = 1e-6) and one with π = 0 on top of the data
    pi = np.array([0.5, 0.3, 0.2, 0.0, 1e-9])
    mu = np.array([0.0, 0.3, -0.3, 0.05, 0.0])
    sigma = np.array([0.05, 1e-6, 0.1, 0.05, 1e3])
    w = np.array([0.0, 0.3, 0.3 + 1e-5, 0.05, -0.31, 1e4, -3e3, 0.29999999])
    expected = _scipy_responsibilities(w, pi, mu, sigma).argmax(1)
    owner = _assign(w, pi, mu, sigma)
    np.testing.assert_array_equal(owner, expected)
    assert owner[1] == 1 and owner[5] == owner[6] == 4  # collapsed hit; far weights to the wide one
    assert not np.any(owner == 3)  # π = 0 never wins


@pytest.mark.parametrize("chunk_size", [1, 7, 220, 221, 222, 10_000])
def test_assign_chunks_never_build_the_full_matrix(monkeypatch, chunk_size):
    rng = np.random.default_rng(3)
    pi, mu, sigma = rng.dirichlet(np.ones(6)), rng.normal(0, 0.5, 6), rng.uniform(0.02, 0.3, 6)
    w = rng.normal(0, 0.6, (13, 17))  # 221 weights: chunk boundaries on both sides
    rows = []
    real = penalty.log_component_densities

    def spy(block, *args):
        rows.append(block.numel())
        return real(block, *args)

    monkeypatch.setattr(penalty, "log_component_densities", spy)
    owner = _assign(w, pi, mu, sigma, chunk_size=chunk_size)
    np.testing.assert_array_equal(
        owner.ravel(), _scipy_responsibilities(w, pi, mu, sigma).argmax(1)
    )
    assert max(rows) <= chunk_size and sum(rows) == w.size
    assert len(rows) == -(-w.size // chunk_size)


def test_assign_float32_weights_are_assigned_in_float64():
    rng = np.random.default_rng(4)
    pi, mu, sigma = rng.dirichlet(np.ones(4)), np.array([0.0, 0.1, -0.2, 0.4]), np.full(4, 0.05)
    w = torch.tensor(rng.normal(0, 0.3, 500), dtype=torch.float32)
    owner = penalty.assign(w, *(torch.tensor(a, dtype=torch.float32) for a in (pi, mu, sigma)))
    w64 = w.double().numpy()  # the float32 weights exactly; the mixture rounded to float32 too
    mixture = (np.float32(a).astype(np.float64) for a in (pi, mu, sigma))
    expected = _scipy_responsibilities(w64, *mixture).argmax(1)
    np.testing.assert_array_equal(owner.numpy(), expected)


def test_assign_empty_weights_and_bad_chunk_size():
    pi, mu, sigma = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])
    assert penalty.assign(torch.empty(0), pi, mu, sigma).shape == (0,)
    with pytest.raises(ValueError, match="chunk_size"):
        penalty.assign(torch.zeros(3), pi, mu, sigma, chunk_size=0)
    with pytest.raises(ValueError, match="same number of components"):
        penalty.assign(torch.zeros(3), pi, mu, torch.ones(2))
