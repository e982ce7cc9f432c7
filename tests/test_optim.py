"""bayes_sws.optim.adam: torch's single-tensor Adam is the oracle, bit for bit."""

from __future__ import annotations

import pytest
import torch

from bayes_sws.optim import adam, adam_for


def _run(options: dict, dtype: torch.dtype, steps: int = 7) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = [(30, 78), (30,), (10, 30), (1,), (14,), (16,)]
    params = [torch.randn(s, generator=generator, dtype=dtype).requires_grad_() for s in shapes]
    grads = [
        [torch.randn(s, generator=generator, dtype=dtype) for s in shapes] for _ in range(steps)
    ]
    groups = [
        {"params": params[:3], "lr": 1e-2, "weight_decay": 1e-3},
        {"params": params[3:], "lr": 3e-3},
    ]
    if options == {"single": True}:
        optimizer = torch.optim.Adam(groups, foreach=False)
    else:
        optimizer = adam(groups, **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_tensor_adam_takes_the_single_tensor_steps_bit_for_bit(dtype):
    want = _run({"single": True}, dtype)
    got = _run({}, dtype)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not torch.equal(want[0], _run({"single": True}, dtype, steps=6)[0])  # steps matter


def test_adam_is_multi_tensor_unless_told_otherwise():
    p = [torch.zeros(3, requires_grad=True)]
    assert adam(p, lr=0.1).defaults["foreach"] is True
    assert adam(p, lr=0.1).defaults["lr"] == 0.1
    assert adam(p, foreach=False).defaults["foreach"] is False
    fused = adam(p, fused=True).defaults
    assert fused["fused"] is True and not fused["foreach"]


def test_adam_for_makes_the_weight_and_mixture_groups():
    w, h = [torch.zeros(3, requires_grad=True)], [torch.zeros(2, requires_grad=True)]
    both = adam_for(w, h, lr=0.1, mixture_lr=0.01)
    assert [g["lr"] for g in both.param_groups] == [0.1, 0.01]
    assert both.param_groups[1]["params"][0] is h[0] and both.defaults["foreach"] is True
    assert [g["lr"] for g in adam_for(w, [], lr=0.1, mixture_lr=0.01).param_groups] == [0.1]


@pytest.mark.parametrize("guide", ["map", "normal", "mixed"])
def test_split_guide_parameters_by_site_counted_by_hand(guide):
    """Two layers with a mixture each (4 sites each) and a learned noise precision: 9
    hyperparameter sites and 2 weight sites; ``map`` holds one tensor per site, ``normal``
    two (locs, scales), ``mixed`` a point for each hyperparameter and two per weight."""
    from pyro.infer.autoguide import init_to_median

    import bayes_sws as sws
    from bayes_sws.core.likelihoods import Gaussian
    from bayes_sws.infer.guides import build_guide, local_params, split_guide_parameters

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    likelihood = Gaussian(learn_precision=True)
    model = sws.SWSModel(net, sws.MixturePrior(3), likelihood, groups="layer")
    with local_params():
        built = build_guide(
            guide, model, init_loc_fn=init_to_median, init_scale=0.01,
            hyper_sites=model.hyper_site_names,
        )  # fmt: skip
        built(torch.randn(5, 3), torch.randn(5))
        weights, hyper = split_guide_parameters(built, model.hyper_site_names)
    per_weight, per_hyper = {"map": (1, 1), "normal": (2, 2), "mixed": (2, 1)}[guide]
    assert (len(weights), len(hyper)) == (2 * per_weight, 9 * per_hyper)
    assert all(".weight" in name for name, _ in weights)
    assert all(".sws." in f".{name}" or "likelihood." in name for name, _ in hyper)
    everything = dict(built.named_parameters())
    assert {n for n, _ in weights} | {n for n, _ in hyper} == set(everything)
    assert all(p is everything[n] for n, p in weights + hyper)
