"""Every script in ``examples/`` runs with its small budget (``--smoke``).

The scripts are found by globbing, so a new example is covered the moment it is
added. They run in-process (``runpy``, as ``__main__``) to spare a Python start
per script; each is also checked to honour ``CI`` the way the README promises.
"""

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_the_examples_are_there():
    names = {p.name for p in EXAMPLES}
    assert {
        "map_digits.py",
        "variational_digits.py",
        "compress_lenet300.py",
        "choose_lambda.py",
        "mdn_inverse.py",
    } <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_with_a_small_budget(script, monkeypatch, capsys):
    source = script.read_text()
    assert "--smoke" in source and '"CI" in os.environ' in source, (
        f"{script.name} needs a --smoke flag that is also switched on by $CI"
    )
    monkeypatch.setattr(sys, "argv", [str(script), "--smoke"])
    monkeypatch.chdir(script.parent)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), f"{script.name} printed nothing"


def test_readme_quick_start_runs_as_written_and_learns(capsys):
    """The README's ten-line quick start, executed verbatim; its printed accuracy is
    checked against scikit-learn's ``accuracy_score`` of the same network's predictions."""

    from sklearn.metrics import accuracy_score

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md lost its '## Quick start' python block"
    namespace: dict = {}
    # exec of the README's own quick-start block, the point of this test
    exec(compile(block.group(1), "README.md quick start", "exec"), namespace)
    printed = capsys.readouterr().out.split()[0]
    net, data = namespace["result"].map_network(), namespace["data"]
    with torch.no_grad():
        predicted = net(data.x_test).argmax(-1).numpy()
    expected = accuracy_score(data.y_test.numpy(), predicted)
    assert float(printed) == pytest.approx(expected, abs=1e-12)
    assert expected > 0.9  # chance is 0.1; λ = 0.1 keeps the pretrained ~0.97 within a few points


def test_readme_multiple_devices_snippet_runs_as_written(capsys):
    """The README's "Multiple devices" block, executed verbatim: the fit lands on the device
    ``"auto"`` means (CUDA if torch sees one, else MPS, else the CPU, asked of torch here),
    and on the CPU it is bit-identical to the same fit without ``device=``."""
    import bayes_sws as sws

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- multi-device-auto -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md lost its '<!-- multi-device-auto -->' python block"
    namespace: dict = {}
    # exec of the README's own block, the point of this test
    exec(compile(block.group(1), "README.md multiple devices", "exec"), namespace)
    if torch.cuda.is_available():
        expected = f"cuda:{torch.cuda.current_device()}"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert capsys.readouterr().out.split()[2] == expected
    weights = [p.detach() for p in namespace["result"].model.net.parameters()]
    assert {str(w.device) for w in weights} == {expected}
    if expected != "cpu":
        return
    torch.manual_seed(0)  # the block's own data and network, built again: the oracle
    x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    model = sws.SWSModel(net, sws.MixturePrior(num_components=8), prior_scale=1.0)
    plain = sws.fit(model, x, y, num_steps=50, batch_size=64)
    assert torch.equal(torch.as_tensor(plain.losses), torch.as_tensor(namespace["result"].losses))
    for mine, theirs in zip(weights, plain.model.net.parameters(), strict=True):
        assert torch.equal(mine, theirs.detach())


def _fashion_mnist_or_skip() -> None:
    from bayes_sws.zoo import data as data_module

    try:
        data_module._find_idx_dir("fashion-mnist", None)
    except data_module.DataError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_compress_lenet300_runs_the_fashion_recipe(monkeypatch, capsys):
    """``compress_lenet300.py --data fashion-mnist``: the library's recipe, whose own π₀ must
    win over the example's default, not collide with it (it did: a TypeError), small budget."""
    _fashion_mnist_or_skip()
    script = next(p for p in EXAMPLES if p.name == "compress_lenet300.py")
    monkeypatch.setattr(sys, "argv", [str(script), "--data", "fashion-mnist", "--smoke"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "fashion-mnist: 512 training images" in out and "compression" in out


def test_choose_lambda_runs_the_fashion_recipe_at_a_target_rate(monkeypatch, capsys):
    """``choose_lambda.py --data fashion-mnist``: the library's recipe (whose own π₀ must win
    over the example's default, not collide with it) at a target rate, with the small budget.
    The rule is tested in tests/compress/test_tuning.py; here the plumbing runs."""
    _fashion_mnist_or_skip()
    script = next(p for p in EXAMPLES if p.name == "choose_lambda.py")
    argv = [str(script), "--data", "fashion-mnist", "--smoke", "--target-rate", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "chosen λ =" in out and "fashion-mnist" in out
    monkeypatch.setattr(sys, "argv", [str(script), "--smoke", "--target-rate", "0.5"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(script), run_name="__main__")
    assert "--target-rate must be a compression rate" in capsys.readouterr().err
