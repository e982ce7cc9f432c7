"""The drop-in penalty (``sws.SoftWeightSharing``) trains what ``fit(guide="map")`` trains.

Oracles: Pyro's ``Trace_ELBO`` loss of the ``AutoDelta`` guide of the same model
(values and gradients), ``sws.penalty.omega`` plus scipy's log-densities for the
hyperprior terms, :func:`bayes_sws.fit` itself run on the same batches
(:func:`batch_indices`) for whole trajectories, eager PyTorch for
``torch.compile``, and scikit-learn's accuracy for the compressed result.
"""

import copy
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from pyro.infer import Trace_ELBO
from scipy import stats

import bayes_sws as sws
from bayes_sws.infer import SVIEngine, batch_indices, local_params
from bayes_sws.infer.penalty_module import SoftWeightSharing

N, B = 48, 16


def _data(dtype=torch.float64, regression=False):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 5, generator=gen, dtype=dtype)
    if regression:
        return x, torch.randn(N, generator=gen, dtype=dtype)
    return x, torch.randint(0, 3, (N,), generator=gen)


def _net(outputs=3, dtype=torch.float64):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, outputs))
    return net.to(dtype)


CASES = {
    # every hyperparameter site: π0 ~ Beta, mixing ~ Dirichlet, means, precisions ~ Gamma
    "zero-component": {
        "prior": lambda: sws.MixturePrior(4, pi_zero_prior=(2.0, 3.0), mixing_concentration=1.5),
        "likelihood": "categorical",
    },
    "ordered-flat-gaussian": {
        "prior": lambda: sws.MixturePrior(3, zero_component=False, ordered_means=True, flat=True),
        "likelihood": sws.Gaussian(precision=2.0),
    },
    "biases-fixed-pi0": {
        "prior": lambda: sws.MixturePrior(3, pi_zero=0.6, include_bias=True),
        "likelihood": "categorical",
    },
}


def _data_term(net, likelihood, xb, yb):
    """The user's own data term: −(N/B) Σ log p(y | f(x)) written in plain torch."""
    out = net(xb)
    if likelihood == "categorical":
        return F.cross_entropy(out, yb, reduction="sum") * N / len(xb)
    precision = 2.0  # Gaussian(precision=2): -log N(y | f, 1/2) summed
    nll = 0.5 * precision * (yb - out.squeeze(-1)) ** 2 - 0.5 * np.log(precision / (2 * np.pi))
    return nll.sum() * N / len(xb)


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_equal_the_autodelta_elbo(case):
    spec = CASES[case]
    regression = spec["likelihood"] != "categorical"
    x, y = _data(regression=regression)
    net = _net(1 if regression else 3)
    model = sws.SWSModel(copy.deepcopy(net), spec["prior"](), spec["likelihood"], prior_scale=0.7)
    engine = SVIEngine(model, x, y, "map", batch_size=B, seed=2)
    engine.init()
    penalty = SoftWeightSharing(
        net, spec["prior"](), prior_scale=0.7, likelihood=spec["likelihood"]
    )
    for step in range(3):  # different batches, parameters moved between them
        index = batch_indices(N, B, step, 2)
        with local_params():
            engine.optimizer.zero_grad()
            expected = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
                model, engine.guide, x, y, index
            )
            expected.backward()
            guide_grads = {n: p.grad for n, p in engine.guide.named_parameters()}
        penalty.zero_grad()
        loss = _data_term(net, "gaussian" if regression else "categorical", x[index], y[index])
        loss = loss + penalty()
        loss.backward()
        assert_close(loss, expected, rtol=1e-12)
        for name, p in net.named_parameters():
            site = f"net.{name}_unconstrained"
            other = (
                guide_grads[site]
                if site in guide_grads
                else dict(model.net.named_parameters())[name].grad
            )
            assert_close(p.grad, other, rtol=1e-10, atol=1e-12, msg=name)
        for site in model.prior.site_names:
            mine = penalty.unconstrained[site.replace(".", "_")].grad
            assert_close(mine, guide_grads[f"{site}_unconstrained"], rtol=1e-10, atol=1e-12)
        with torch.no_grad():  # move both by the same arbitrary amount
            for p in list(net.parameters()) + list(penalty.unconstrained.values()):
                p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))
            for p in engine.guide.parameters():
                p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))
            for p in model.free_parameters().values():
                p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))


def test_value_is_lambda_omega_minus_scipy_log_hyperprior():
    net = _net()
    prior = sws.MixturePrior(4, pi_zero_prior=(2.0, 3.0), mixing_concentration=1.5)
    penalty = SoftWeightSharing(net, prior, prior_scale=0.3)
    with torch.no_grad():
        penalty.unconstrained["sws_means"].copy_(torch.tensor([-0.2, 0.1, 0.3]))
        values = {k: v.numpy() for k, v in penalty.site_values().items()}
        pi, mu, sigma = penalty.mixture()
        w = torch.cat([net[0].weight.reshape(-1), net[2].weight.reshape(-1)])
        omega = sws.penalty.omega(w, pi, mu, sigma)
        log_hyper = (
            stats.beta(2.0, 3.0).logpdf(values["sws.pi_zero"])
            + stats.dirichlet([1.5] * 3).logpdf(values["sws.mixing"])
            + stats.norm(0.0, 1.0).logpdf(values["sws.means"]).sum()
            + stats.gamma(2.0, scale=1 / 2e-3).logpdf(values["sws.precisions"]).sum()
        )
        assert_close(penalty(), 0.3 * float(omega) - log_hyper, rtol=1e-12)


def test_mean_scaled_loss_has_the_gradient_divided_by_n():
    x, y = _data()
    net = _net()
    penalty = SoftWeightSharing(net, sws.MixturePrior(4), prior_scale=1.0)
    grads = []
    for mean_scaled in (False, True):
        penalty.zero_grad()
        if mean_scaled:
            loss = F.cross_entropy(net(x[:B]), y[:B]) + penalty() / N
        else:
            loss = F.cross_entropy(net(x[:B]), y[:B], reduction="sum") * N / B + penalty()
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in penalty.parameters()]))
    assert_close(grads[1] * N, grads[0], rtol=1e-11, atol=1e-13)


def test_adam_loop_follows_fit_map_step_for_step():
    x, y = _data()
    net = _net()
    prior = sws.MixturePrior(4, pi_zero_prior=(2.0, 3.0))
    num_steps, seed = 200, 5
    result = sws.fit(
        sws.SWSModel(copy.deepcopy(net), prior, prior_scale=0.7),
        x,
        y,
        "map",
        num_steps=num_steps,
        batch_size=B,
        lr=1e-2,
        mixture_lr=3e-3,
        seed=seed,
        collapse_threshold=None,
    )
    penalty = SoftWeightSharing(net, prior, prior_scale=0.7)
    optimizer = torch.optim.Adam(penalty.parameter_groups(lr=1e-2, mixture_lr=3e-3))
    losses = []
    for step in range(num_steps):
        index = batch_indices(N, B, step, seed)
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x[index]), y[index], reduction="sum") * N / B + penalty()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert_close(losses, result.losses, rtol=1e-9)
    median = result.median()
    for name, p in net.named_parameters():
        expected = median.get(f"net.{name}", dict(result.model.net.named_parameters())[name])
        assert_close(p, expected, rtol=1e-8, atol=1e-10, msg=name)
    for mine, theirs in zip(penalty.mixture(), result.mixture()):
        assert_close(mine, theirs, rtol=1e-8, atol=1e-10)
    assert_close(penalty.to_result().mixture().mu, result.mixture().mu, rtol=1e-8, atol=1e-10)


def test_parameter_groups_hold_each_parameter_once_at_its_rate():
    net = _net()
    penalty = SoftWeightSharing(net, sws.MixturePrior(4), prior_scale=1.0)
    weights, mixture = penalty.parameter_groups(lr=0.1, mixture_lr=0.02)
    assert (weights["lr"], mixture["lr"]) == (0.1, 0.02)
    assert {id(p) for p in weights["params"]} == {id(p) for p in net.parameters()}
    assert len(mixture["params"]) == 4  # pi_zero, mixing, means, precisions (hand count)
    assert {id(p) for p in mixture["params"]} == {id(p) for p in penalty.unconstrained.values()}
    with pytest.raises(ValueError, match="mixture_lr must be a number > 0, got -1"):
        penalty.parameter_groups(lr=0.1, mixture_lr=-1)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="latent parameters"):
        SoftWeightSharing(
            _net(1), sws.MixturePrior(3), likelihood=sws.Gaussian(learn_precision=True)
        )
    with pytest.raises(ValueError, match="prior_scale"):
        SoftWeightSharing(_net(), sws.MixturePrior(3), prior_scale=-1.0)
    with pytest.raises(TypeError, match="MixturePrior"):
        SoftWeightSharing(_net(), "mixture")


def test_torch_compile_of_the_step_matches_eager():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    x, y = _data(torch.float32)
    nets = [_net(dtype=torch.float32) for _ in range(2)]
    penalties = [SoftWeightSharing(n, sws.MixturePrior(4), prior_scale=0.7) for n in nets]

    def step(net, penalty, xb, yb):
        loss = F.cross_entropy(net(xb), yb, reduction="sum") * N / len(xb) + penalty()
        loss.backward()
        return loss.detach()

    compiled = torch.compile(step, backend="aot_eager")
    start = time.perf_counter()
    try:
        got = compiled(nets[1], penalties[1], x[:B], y[:B])
    except Exception as err:  # noqa: BLE001 (any failure to compile here means: no working compiler)
        pytest.skip(f"torch.compile does not run here: {type(err).__name__}: {err}")
    if time.perf_counter() - start > 25:
        pytest.skip("torch.compile took over 25 s on this CPU")
    expected = step(nets[0], penalties[0], x[:B], y[:B])
    assert_close(got, expected, rtol=1e-6)
    for mine, theirs in zip(penalties[1].parameters(), penalties[0].parameters()):
        assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6)


def test_to_result_feeds_compression_and_arviz():
    from sklearn.metrics import accuracy_score

    from bayes_sws.compress.pipeline import compress_result
    from bayes_sws.diagnostics import to_inference_data

    x, y = _data()
    net = _net()
    penalty = SoftWeightSharing(net, sws.MixturePrior(4), prior_scale=0.5)
    result = penalty.to_result(losses=[3.0, 2.0], config={"lr": 1e-3})
    assert isinstance(result, sws.FitResult) and result.guide_name == "map"
    assert_close(result.losses, [3.0, 2.0])
    compressed = compress_result(result, x, y)
    with torch.no_grad():
        accuracy = accuracy_score(y.numpy(), net(x).argmax(-1).numpy())
    assert compressed.test_accuracy_before == pytest.approx(accuracy, abs=1e-12)
    idata = to_inference_data(result, x, y, num_samples=8, num_chains=2)
    mu = idata.posterior["sws.mu"].values  # a point mass: every draw the penalty's means
    expected = penalty.mixture().mu.detach().numpy()
    assert_close(mu, np.broadcast_to(expected, mu.shape), rtol=1e-12)
    assert idata.log_likelihood["obs"].shape[-1] == N


def _readme_block(marker: str) -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, f"README.md lost its '<!-- {marker} -->' python block"
    return block.group(1)


def test_readme_own_loop_snippet_runs_and_matches_fit():
    namespace: dict = {}
    exec(compile(_readme_block("own-loop-pytorch"), "README own loop", "exec"), namespace)
    penalty, net = namespace["penalty"], namespace["net"]
    assert isinstance(namespace["result"], sws.FitResult)
    # oracle: Pyro's ELBO of the full model under the result's AutoDelta guide, all the data
    x, y = namespace["x"], namespace["y"]
    with torch.no_grad():
        mine = F.cross_entropy(net(x), y, reduction="sum") + penalty()
        with local_params():
            result = namespace["result"]
            expected = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
                result.model, result.guide, x, y
            )
    assert_close(mine, expected, rtol=1e-5)
