"""Small shared test scenarios: a tiny network, data for it, site values off the init."""

import torch

N = 40


def small_net(out_features, seed=0):
    """A 3-6-out tanh MLP in float64."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, out_features)
    ).double()


def small_data(kind, seed=1):
    """N inputs of size 3 with Gaussian targets or labels in 0..3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    if kind == "gaussian":
        y = torch.randn(N, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, 4, (N,), generator=g)
    return x, y


def perturbed_values(model, seed=2):
    """Site values away from the init, so nothing is checked at a special point."""
    g = torch.Generator().manual_seed(seed)
    values = model.init_values()
    for name in model.weight_site_names:
        noise = torch.randn(values[name].shape, generator=g, dtype=torch.float64)
        values[name] = values[name] + 0.1 * noise
    if "sws.means" in values:
        values["sws.means"] = values["sws.means"] + 0.05
    if "sws.precisions" in values:
        num = len(values["sws.precisions"])
        values["sws.precisions"] = values["sws.precisions"] * torch.linspace(
            0.5, 2.0, num, dtype=torch.float64
        )
    if "sws.mixing" in values:
        num = len(values["sws.mixing"])
        mixing = torch.linspace(1.0, 2.0, num, dtype=torch.float64)
        values["sws.mixing"] = mixing / mixing.sum()
    if "sws.pi_zero" in values:
        values["sws.pi_zero"] = torch.tensor(0.3, dtype=torch.float64)
    if "likelihood.precision" in values:
        values["likelihood.precision"] = torch.tensor(1.7, dtype=torch.float64)
    return values


def process_group_problem(num_data):
    """What the multi-process tests fit, and their single-process oracles: ``num_data``
    points of 5 features with labels in 0..2, a 5-7-3 tanh network and a 4-component
    mixture, in float64."""
    import bayes_sws as sws

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(num_data, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (num_data,), generator=gen)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return x, y, net.double(), sws.MixturePrior(4)
