"""A variational posterior for soft weight-sharing on digits: one argument away from MAP.

The same model as ``map_digits.py``, fitted with a mean-field Gaussian guide
(``guide="normal"``) and with ``guide="mixed"`` (point hyperparameters, Gaussian
weights). The posterior gives a predictive distribution: averaged over weight
draws, and with an uncertainty that is larger on the digits it gets wrong.

    python examples/variational_digits.py            # a couple of minutes
    python examples/variational_digits.py --smoke    # a few seconds (also when CI is set)
"""

import argparse
import copy
import os

import torch

import bayes_sws as sws
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import mlp
from bayes_sws.zoo.training import accuracy, train


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def main(smoke: bool) -> None:
    num_epochs, num_steps, num_samples = (3, 40, 10) if smoke else (60, 4000, 200)

    torch.manual_seed(0)
    data = load_dataset("digits")
    net = mlp([64, 100, 10])
    train(net, data.x_train, data.y_train, num_epochs=num_epochs)

    for guide in ("map", "normal", "mixed"):
        prior = sws.MixturePrior(num_components=16, zero_component=True)
        model = sws.SWSModel(copy.deepcopy(net), prior, likelihood="categorical", prior_scale=0.1)
        result = sws.fit(
            model,
            data.x_train,
            data.y_train,
            guide=guide,
            num_steps=num_steps,
            lr=1e-3,
            mixture_lr=3e-3,
            batch_size=128,
            init_scale=1e-2,
            seed=0,
        )
        probs = result.predict(data.x_test, num_samples=num_samples)  # posterior predictive
        correct = probs.argmax(-1) == data.y_test
        entropy = predictive_entropy(probs)
        median_accuracy = accuracy(result.map_network(), data.x_test, data.y_test)
        wrong = f"{entropy[~correct].mean():.3f}" if (~correct).any() else "n/a"
        print(
            f"guide={guide:7s} predictive accuracy {correct.double().mean():.4f}  "
            f"median network {median_accuracy:.4f}  "
            f"entropy right {entropy[correct].mean():.3f} / wrong {wrong}"
        )
        if guide == "normal":  # "mixed" keeps the hyperparameters as points
            sigma = result.sample_posterior(num_samples)["sws.precisions"].rsqrt()
            print(
                f"          posterior sd of the component widths σ_j: "
                f"{sigma.std(0).mean():.2e} (mean over components)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny budget (also when $CI is set)")
    args = parser.parse_args()
    main(smoke=args.smoke or "CI" in os.environ)
