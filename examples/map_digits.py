"""MAP soft weight-sharing on scikit-learn's bundled digits.

Pretrain a small MLP, retrain it under a learned mixture-of-Gaussians prior with
a zero component (MAP by SVI: exactly E(w) + λΩ(w) - log p(π, μ, σ)), and show
how the weights gathered around a few shared values. The fitted result is saved
to a directory and read back.

    python examples/map_digits.py            # about a minute on a laptop CPU
    python examples/map_digits.py --smoke    # a few seconds (also when CI is set)
"""

import argparse
import os
import tempfile

import numpy as np
import torch

import bayes_sws as sws
from bayes_sws.runs.commands import load_result, save_result
from bayes_sws.runs.demo import clustering_summary
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import mlp
from bayes_sws.zoo.training import accuracy, train


def main(smoke: bool) -> None:
    num_epochs, num_steps = (3, 50) if smoke else (60, 3000)

    torch.manual_seed(0)
    data = load_dataset("digits")  # bundled, no download
    net = mlp([64, 100, 10])
    train(net, data.x_train, data.y_train, num_epochs=num_epochs)
    print(f"pretrained test accuracy: {accuracy(net, data.x_test, data.y_test):.4f}")

    prior = sws.MixturePrior(num_components=16, zero_component=True)
    model = sws.SWSModel(net, prior, likelihood="categorical", prior_scale=0.1)
    result = sws.fit(
        model,
        data.x_train,
        data.y_train,
        guide="map",
        num_steps=num_steps,
        lr=1e-3,
        mixture_lr=3e-3,
        batch_size=128,
        seed=0,
    )
    retrained = result.map_network()
    print(f"retrained test accuracy:  {accuracy(retrained, data.x_test, data.y_test):.4f}")
    print(
        f"loss: {result.losses[0]:.1f} -> {result.losses[-1]:.1f} after {len(result.losses)} steps"
    )

    # How the weights share the components (argmax of the responsibilities, PRML 5.140).
    weights = torch.cat(
        [
            p.detach().reshape(-1)
            for n, p in retrained.named_parameters()
            if n in model.prior_param_names
        ]
    )
    share, within = clustering_summary(weights, result.mixture())
    pi, mu, sigma = (t.numpy() for t in result.mixture())
    print("component      pi        mu     sigma   share of weights")
    for j in np.argsort(mu):
        print(f"{j:9d} {pi[j]:6.3f} {mu[j]:+9.4f} {sigma[j]:9.4f}   {100 * share[j]:6.2f} %")
    print(f"{100 * within:.1f} % of the weights lie within 2σ of their component's mean")

    # A fitted result is a directory: save it, load it back, get the same network.
    with tempfile.TemporaryDirectory() as directory:
        save_result(
            result,
            directory,
            network_spec={"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [100]},
        )
        again = load_result(directory)
        assert torch.equal(again.map_network()(data.x_test), retrained(data.x_test))
        print(f"saved and reloaded from {directory}: identical predictions")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny budget (also when $CI is set)")
    args = parser.parse_args()
    main(smoke=args.smoke or "CI" in os.environ)
