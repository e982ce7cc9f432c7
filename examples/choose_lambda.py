"""Choose λ on a validation split, then read the test set once.

The honest protocol behind BENCHMARKS.md's "chosen on validation" rows
(``bayes_sws.compress.tuning``): hold out part of the *training* set, pretrain
LeNet-300-100 on the rest, compress it by soft weight-sharing at every λ of a grid
and score each on the held-out images only. The chosen λ is the highest
compression rate whose validation error stays within ``--margin`` points of the
pretrained network's (with ``--target-rate R``, the least validation error among those
that reach R×); only that network is then scored on the test set. With
``--seeds 0 1 2`` every λ is retrained once per seed and judged by the means (one
retraining's validation error moves by about as much as the margin); ``--jobs 2``
runs the retrainings in two processes (the same trials).

    python examples/choose_lambda.py                         # mnist-5k, about 3 minutes
    python examples/choose_lambda.py --data fashion-mnist --seeds 0 1 2 --jobs 2
                                                             # the benchmark's grid: its tuning took 29 min
    python examples/choose_lambda.py --smoke                 # seconds (also when CI is set)
"""

import argparse
import os

import torch

from bayes_sws.compress.pipeline import RECIPES
from bayes_sws.compress.tuning import tune_soft_weight_sharing, validation_split
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import lenet_300_100
from bayes_sws.zoo.training import accuracy, train

# Per data set: the λ grid and the other retraining settings. Fashion-MNIST's are the library's
# recipe (bayes_sws.compress.pipeline.RECIPES, which benchmarks/compression.py uses too), every
# one chosen on this kind of split (BENCHMARKS.md): the weights' lr 1e-3 and the soft-to-hard
# anneal of the precision prior from epoch 28 to 38, π₀ = 0.999; its λ, 0.07, was chosen from
# its grid (on three splits, with a unit-pruning budget).
FASHION = RECIPES["fashion-mnist/lenet-300-100"]
SETTINGS = {
    "mnist-5k": {
        "grid": (0.003, 0.01, 0.03),
        "settings": {"lr": 1e-3, "mixture_lr": 1e-2, "num_epochs": 60},
    },
    "fashion-mnist": {"grid": FASHION.grid, "settings": FASHION.settings},
}


def main(
    data_name: str,
    seeds: list[int],
    jobs: int,
    margin: float,
    smoke: bool,
    target_rate: float | None = None,
) -> None:
    torch.manual_seed(0)
    data = load_dataset(data_name, standardize=False)  # raw pixels in [0, 1], as in the paper
    grid, settings = SETTINGS[data_name]["grid"], dict(SETTINGS[data_name]["settings"])
    pretrain_epochs = 30
    if smoke:  # a slice of the data and a handful of steps: checks the plumbing only
        data = data.head(640, 256)
        grid, pretrain_epochs, settings["num_epochs"] = grid[:2], 1, 0.5
        settings.pop("anneal_epochs", None)  # the pipeline's default window fits any length

    # 1. the validation images come out of the training set; the test set is not touched
    tuning, final = validation_split(data, fraction=0.1, seed=0)
    # 2. pretrain on what is left
    net = lenet_300_100(data.num_features, data.num_classes)
    train(net, tuning.x_train, tuning.y_train, num_epochs=pretrain_epochs, lr=1e-3, batch_size=128)
    # 3. every λ scored on the validation images only
    found = tune_soft_weight_sharing(
        net,
        tuning,
        [{"prior_scale": scale} for scale in grid],
        max_error_increase=margin,
        target_rate=target_rate,
        seeds=seeds,
        jobs=jobs,
        **{"num_components": 17, "pi_zero": 0.99, **settings},  # a recipe's own settings win
    )
    print(
        f"{data.name}: {len(tuning.x_train)} training images, {len(tuning.x_test)} held out "
        f"for validation; λ over {list(grid)}, seeds {seeds}"
    )
    print(found.table())
    chosen = found.chosen
    if not found.within_margin:
        print(f"no λ stayed within {margin} points on validation: the smallest loss is chosen")
    # 4. the test set, read once, for the chosen network only
    before = accuracy(net, final.x_test, final.y_test)
    after = accuracy(chosen.result.stored_net, final.x_test, final.y_test)
    print(
        f"chosen λ = {chosen.settings['prior_scale']:g}: test error {100 * (1 - before):.2f} % "
        f"→ {100 * (1 - after):.2f} % ({100 * (before - after):+.2f} points) at "
        f"{chosen.result.compression_rate:.1f}x (seed {seeds[0]}'s network)"
    )
    # 5. to retrain on the whole training set: the choice as a recipe, λ scaled to its size
    # (the data term sums over the images; the prior is counted once). If that refit prunes
    # less than validation did, tuning.calibrate_refit_scale finds the λ at which it reaches
    # the validated rate (found.recipe().rate) from the training set alone.
    refit = found.recipe().kwargs(num_train=data.num_train)
    print(
        f"on all {data.num_train} training images the same trade-off per image is "
        f"λ = {refit['prior_scale']:.4g}: soft_weight_sharing(net, data, "
        "**found.recipe().kwargs(num_train=data.num_train))"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default="mnist-5k", choices=sorted(SETTINGS), help="data set (default: mnist-5k)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="retraining seeds per λ (default: 0)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="retrainings at a time (default 1)")
    parser.add_argument(
        "--margin", type=float, default=0.5, help="validation points a λ may add (default 0.5)"
    )
    parser.add_argument(
        "--target-rate",
        type=float,
        metavar="R",
        help="instead of the highest rate within the margin, the least validation error "
        "among the λ within it that reach R× (tune_soft_weight_sharing(target_rate=R))",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny budget (also when $CI is set)")
    args = parser.parse_args()
    if args.jobs < 1:  # checked before a minute of pretraining, not after
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if not args.margin >= 0:
        parser.error(f"--margin must be a number of points >= 0, got {args.margin}")
    if min(args.seeds) < 0:
        parser.error(f"--seeds must be non-negative, got {args.seeds}")
    if args.target_rate is not None and not args.target_rate >= 1:
        parser.error(f"--target-rate must be a compression rate >= 1 (x), got {args.target_rate}")
    smoke = args.smoke or "CI" in os.environ
    main(args.data, args.seeds, args.jobs, args.margin, smoke, args.target_rate)
