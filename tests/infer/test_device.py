"""``device=`` on ``fit`` and ``SVIEngine``: the one reading of a device argument
(``bayes_sws.devices.resolve_device``), CPU bit-identical to the default, clear
errors for devices this machine lacks, and — where CUDA is present — the fit, its
result, the prior kernel and checkpoints on the GPU and back."""

import io

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bayes_sws as sws
from bayes_sws.core import kernel
from bayes_sws.core.kernel import mixture_log_prob_and_grad
from bayes_sws.devices import resolve_device
from bayes_sws.infer.svi import FitState, SVIEngine, local_params

X = torch.randn(60, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(2))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return sws.SWSModel(net, sws.MixturePrior(3), prior_scale=0.5)


def _params(result):
    with local_params():
        state = {k: v.detach().clone() for k, v in result.guide.state_dict().items()}
    state.update({k: v.detach().clone() for k, v in result.model.net.state_dict().items()})
    return state


# ---------------------------------------------------------------------------- resolve_device
def test_auto_is_cuda_then_mps_then_cpu():
    if torch.cuda.is_available():
        expected = torch.device("cuda", torch.cuda.current_device())
    elif torch.backends.mps.is_available():
        expected = torch.device("mps")
    else:
        expected = torch.device("cpu")
    assert resolve_device("auto") == expected == resolve_device()
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("gpu", ValueError, r"device must be one of 'cpu', 'cuda', 'cuda:N', 'mps', 'auto'.*'gpu'"),
        ("cuda:x", ValueError, r"device must be one of .*got 'cuda:x'"),
        ("meta", ValueError, r"device must be one of .*got 'meta'"),
        (0, TypeError, r"device must be one of .*got 0 \(int\)"),
    ],
)
def test_a_bad_device_value_is_named(value, error, match):
    with pytest.raises(error, match=match):
        resolve_device(value)


def test_a_missing_cuda_device_says_how_many_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    message = "device 'cuda:3' is not available: 1 CUDA device found; use 'cpu' or 'auto'"
    with pytest.raises(ValueError, match=f"^{message}$"):
        resolve_device("cuda:3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_fit_on_cuda_without_cuda_fails_before_touching_the_model():
    model = _model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(ValueError, match=r"device 'cuda' is not available: no CUDA devices found"):
        sws.fit(model, X, Y, num_steps=2, device="cuda")
    for name, value in model.net.state_dict().items():
        assert torch.equal(value, before[name]) and value.device.type == "cpu"


# ---------------------------------------------------------------------------- the CPU
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "auto"])
def test_cpu_is_the_default_bit_for_bit(device):
    if device == "auto" and resolve_device("auto").type != "cpu":
        pytest.skip("auto is not the CPU here")
    settings = {"guide": "normal", "num_steps": 12, "batch_size": 16, "lr": 1e-2, "seed": 4}
    default = sws.fit(_model(), X, Y, **settings)
    placed = sws.fit(_model(), X, Y, device=device, **settings)
    np.testing.assert_array_equal(placed.losses, default.losses)
    expected = _params(default)
    for name, value in _params(placed).items():
        assert torch.equal(value, expected[name]), name
    assert placed.config["device"] == "cpu" == default.config["device"]


def test_the_engine_moves_the_model_and_reports_its_device():
    model = _model()
    engine = SVIEngine(model, X, Y, device="cpu")
    assert engine.device == torch.device("cpu") and model.to("cpu") is model


def test_the_prior_kernels_c_loop_serves_cpu_tensors_only():
    for device in ("cuda", "cuda:1", "mps"):
        assert kernel._native_library(torch.device(device)) is None


# ---------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("guide", ["map", "normal"])
def test_fit_on_cuda_keeps_everything_there(guide):
    model = _model()
    result = sws.fit(model, X, Y, guide=guide, num_steps=20, batch_size=16, device="cuda")
    assert all(p.device.type == "cuda" for p in model.net.parameters())
    assert all(v.device.type == "cuda" for v in result.median().values())
    assert all(t.device.type == "cuda" for t in result.mixture())
    probabilities = result.predict(X[:5])  # a CPU input is moved to the model's device
    assert probabilities.device.type == "cuda" and np.isfinite(result.losses).all()
    torch.testing.assert_close(probabilities.sum(-1).cpu(), torch.ones(5))


@needs_cuda
def test_a_loader_on_cuda_equals_the_cpu_fit_to_float_precision():
    loader = DataLoader(TensorDataset(X.double(), Y), batch_size=20)
    cpu = sws.fit(_double(), loader, num_steps=6, lr=1e-2)
    cuda = sws.fit(_double(), loader, num_steps=6, lr=1e-2, device="cuda")
    np.testing.assert_allclose(cuda.losses[0], cpu.losses[0], rtol=1e-12)  # the same parameters
    np.testing.assert_allclose(cuda.losses, cpu.losses, rtol=1e-6)  # after Adam's steps


def _double():
    model = _model()
    model.net.double()
    return model


@needs_cuda
def test_a_cuda_checkpoint_resumes_on_the_cpu():
    states = []
    sws.fit(_model(), X, Y, num_steps=5, device="cuda", checkpoint=states.append)
    buffer = io.BytesIO()
    torch.save(states[-1].to_dict(), buffer)
    buffer.seek(0)
    state = FitState.from_dict(torch.load(buffer, weights_only=True, map_location="cpu"))
    resumed = sws.fit(_model(), X, Y, num_steps=8, initial_state=state, device="cpu")
    assert len(resumed.losses) == 8 and np.isfinite(resumed.losses).all()
    assert all(v.device.type == "cpu" for v in resumed.median().values())


@needs_cuda
def test_the_prior_kernel_on_cuda_takes_the_torch_path_and_agrees_with_the_cpu():
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(50_000, generator=generator, dtype=torch.float64)
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    mu = torch.tensor([0.0, -0.4, 0.5], dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.2, 0.3], dtype=torch.float64)
    cpu = mixture_log_prob_and_grad(w, pi, mu, sigma)
    cuda = mixture_log_prob_and_grad(*(t.cuda() for t in (w, pi, mu, sigma)))
    for a, b in zip(cuda, cpu):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)
