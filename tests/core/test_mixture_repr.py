"""A mixture prints as a short table: the numbers in it are the values, rounded."""

import torch

from bayes_sws.core.priors import Mixture


def test_mixture_repr_is_a_table_of_rounded_values():
    pi = torch.tensor([0.9, 0.0666666, 0.0333334])
    mu = torch.tensor([0.0, -0.384912345, 1.23456789e-6])
    sigma = torch.tensor([0.01, 0.0512345, 2.5])
    text = repr(Mixture(pi, mu, sigma))
    lines = text.splitlines()
    assert lines[0] == "Mixture(3 components)"
    assert lines[1].split() == ["j", "pi", "mu", "sigma"]
    assert len(lines) == 5 and "tensor" not in text
    for j, line in enumerate(lines[2:]):
        index, *numbers = line.split()
        assert int(index) == j
        for got, value in zip(numbers, (pi[j], mu[j], sigma[j])):
            # 4 significant digits: within half a unit in the 4th digit
            assert abs(float(got) - float(value)) <= 5e-4 * abs(float(value)) + 1e-12
            assert len(got.replace("-", "").replace(".", "").split("e")[0].lstrip("0")) <= 4


def test_batched_mixture_repr_states_its_shape():
    text = repr(Mixture(*(torch.ones(5, 3) for _ in range(3))))
    assert "(5, 3)" in text and "tensor" not in text
