r"""ArviZ conversion and plots: the one module that imports :mod:`arviz` (lazily).

:func:`to_inference_data` turns a :class:`~bayes_sws.infer.FitResult`
(independent draws from the fitted guide, split into pseudo-chains) or a
:class:`~bayes_sws.infer.mcmc.MCMCResult` (the real chains) into
:class:`arviz.InferenceData` through ``az.from_dict``: ArviZ 1.x has no Pyro
converter and 0.x's ``from_pyro`` takes only ``MCMC`` objects.

Groups and dimension names
--------------------------
=====================  ==========================================================
group                  variables (dimensions after ``chain``, ``draw``)
=====================  ==========================================================
posterior              ``sws.pi``, ``sws.mu``, ``sws.sigma`` (``component``);
                       ``sws.precisions`` (``component``), ``sws.means``,
                       ``sws.mixing`` (``nonzero_component`` with a zero
                       component, else ``component``), ``sws.pi_zero``,
                       ``likelihood.precision`` (scalars); weight sites when
                       asked, e.g. ``net.0.weight`` (``net.0.out_features``,
                       ``net.0.in_features``); ``predictive_mean`` when asked
                       (``data``; ``class`` for class probabilities)
posterior_predictive   ``obs`` (``data``; ``output`` for vector targets)
log_likelihood         ``obs`` (``data``): pointwise, for ``az.loo``/``az.waic``
observed_data          ``obs`` (``data``; ``output``)
constant_data          ``x`` (``data``, ``feature``)
sample_stats           NUTS only: ``diverging``, ``tree_depth``, ``n_steps``,
                       ``acceptance_rate``, ``energy``, ``lp``, ``step_size``
=====================  ==========================================================

Coordinates of ``component`` are ``0 … M−1`` (the zero component first, when
there is one); ``nonzero_component`` runs ``1 … M−1`` so the labels agree with
``component``.

Diagnose identifiable quantities (``predictive_mean``, the pointwise
log-likelihood, the mixture with ordered means): raw weights are not identifiable
(see :mod:`bayes_sws.infer.mcmc`).
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyro
import torch
from torch import Tensor, nn

from ..core.likelihoods import Categorical
from ..core.model import SWSModel
from ..core.penalty import log_joint_densities
from ..core.sites import MEANS, MIXING, MIXTURE_SITES, OBS, SITE_PREFIX, WEIGHT_PREFIX
from ..infer.mcmc import MCMCResult
from ..infer.svi import FitResult, as_data, get_rng_state, network_output, set_rng_state
from ..validation import check_int, check_seed

__all__ = [
    "MIXTURE_VARS",
    "load_arviz",
    "mixture_bin_mass",
    "plot_hyperposterior",
    "plot_loss",
    "plot_mixture_over_histogram",
    "plot_weights_before_after",
    "predictive_draws",
    "summary",
    "to_inference_data",
]

MIXTURE_VARS = MIXTURE_SITES


def load_arviz():
    """Import ArviZ on first use, with an error that says how to install it."""
    try:
        with warnings.catch_warnings():  # ArviZ 0.2x announces its 1.0 refactor on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as err:  # pragma: no cover - arviz is a dependency
        raise ImportError(
            "bayes_sws.diagnostics needs ArviZ: install it with `pip install 'arviz>=0.17'` "
            "(and `pip install h5netcdf` or `netCDF4` to save InferenceData as netCDF)"
        ) from err
    return arviz


def summary(idata, *, var_names=None):
    """``arviz.summary`` of ``idata``, quiet about the R-hat of point estimates.

    A MAP (Delta) posterior has constant draws, whose R-hat is undefined; ArviZ
    warns about that on every variable, which says nothing about the fit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_arviz().summary(idata, var_names=var_names)


def plot_weights_before_after(*args, **kwargs):
    """Weights before against after retraining; see :func:`bayes_sws.compress.plot_weights_before_after`."""
    from ..compress.plots import plot_weights_before_after as plot

    return plot(*args, **kwargs)


# ---------------------------------------------------------------------- draws
def _check_result(result: Any) -> None:
    if not isinstance(result, (FitResult, MCMCResult)):
        raise TypeError(
            "result must be a FitResult (from bayes_sws.fit) or an MCMCResult (from "
            f"bayes_sws.infer.mcmc.sample_nuts), got {type(result).__name__}"
        )


def _posterior_draws(
    result: FitResult | MCMCResult, num_samples: int, seed: int, num_chains: int = 4
) -> dict[str, Tensor]:
    """Latent sites and the mixture, each of shape ``(chain, draw, *site_shape)``.

    Guide draws are independent; they are split into ``num_chains`` pseudo-chains
    so that ArviZ's R-hat and ESS are defined (they need two chains or more).
    """
    seed = check_seed("seed", seed)
    if isinstance(result, MCMCResult):
        return dict(result.samples)
    num_samples = check_int("num_samples", num_samples, low=1)
    num_chains = check_int("num_chains", num_chains, low=1)
    if num_samples % num_chains:
        raise ValueError(
            f"num_samples={num_samples} guide draws cannot be split into num_chains={num_chains} "
            "equal chains; make num_samples a multiple of num_chains"
        )
    pyro.set_rng_seed(seed)
    flat = result.sample_posterior(int(num_samples))
    model = result.model
    flat.update(_mixture_of_draws(model, {n: flat[n] for n in model.prior.site_names}, num_samples))
    return {
        name: value.reshape((num_chains, num_samples // num_chains) + value.shape[1:])
        for name, value in flat.items()
    }


def _mixture_of_draws(
    model: SWSModel, hyper: Mapping[str, Tensor], num_samples: int
) -> dict[str, Tensor]:
    """``sws.pi``, ``sws.mu``, ``sws.sigma`` of ``num_samples`` draws of the prior's sites, each ``(draw, M)``."""
    with torch.no_grad():
        mixture = model.prior.mixture(dict(hyper), model.like_tensor())
    out = {}
    for name, value in zip(MIXTURE_VARS, mixture):
        if value.dim() == 1:  # no latent hyperparameters: the same mixture in every draw
            value = value.expand((num_samples,) + value.shape)
        out[name] = value.reshape(num_samples, -1)
    return out


def _as_inputs(model: SWSModel, x: Any) -> Tensor:
    like = model.like_tensor()
    return torch.as_tensor(x).to(device=like.device, dtype=like.dtype)


def _each_draw(model: SWSModel, draws: Mapping[str, Tensor], x: Tensor):
    """Yield ``(chain, draw, values, output)`` for every posterior draw."""
    first = next(iter(draws.values()))
    num_chains, num_draws = first.shape[:2]
    with torch.no_grad():
        for c in range(num_chains):
            for d in range(num_draws):
                values = {k: v[c, d] for k, v in draws.items()}
                yield c, d, values, network_output(model, values, x)


def predictive_draws(
    result: FitResult | MCMCResult,
    x: Any,
    *,
    num_samples: int = 200,
    num_chains: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """The likelihood's mean at ``x`` for every posterior draw.

    Regression means or class probabilities, shape ``(chain, draw, len(x), ...)``:
    an identifiable quantity to diagnose (``az.rhat``, ``az.ess``) and to draw
    predictive bands from. A guide gives ``num_samples`` draws split into
    ``num_chains`` pseudo-chains (as in :func:`to_inference_data`); an MCMC
    result gives all its chains and draws.
    """
    _check_result(result)
    draws = _posterior_draws(result, num_samples, seed, num_chains)
    model = result.model
    x = _as_inputs(model, x)
    out = None
    for c, d, values, output in _each_draw(model, draws, x):
        mean = model.likelihood.mean(output, values).cpu().numpy()
        if out is None:
            out = np.empty(next(iter(draws.values())).shape[:2] + mean.shape, dtype=mean.dtype)
        out[c, d] = mean
    assert out is not None, "at least one draw"
    return out


# ---------------------------------------------------------------------- dims
_CONV_KERNEL_DIMS = {
    1: ("kernel_length",),
    2: ("kernel_height", "kernel_width"),
    3: ("kernel_depth", "kernel_height", "kernel_width"),
}


def _parameter_dims(net: nn.Module, param_name: str, shape: torch.Size) -> list[str]:
    """Dimension names for a parameter tensor, from the layer that owns it when known."""
    owner, _, leaf = param_name.rpartition(".")
    prefix = WEIGHT_PREFIX + owner if owner else WEIGHT_PREFIX.rstrip(".")
    try:
        module = net.get_submodule(owner)
    except AttributeError:
        module = None
    names: tuple[str, ...] | None = None
    if isinstance(module, nn.Linear):
        names = {"weight": ("out_features", "in_features"), "bias": ("out_features",)}.get(leaf)
    elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        in_name = "in_channels" if module.groups == 1 else "in_channels_per_group"
        kernel = _CONV_KERNEL_DIMS.get(len(module.kernel_size), ())
        names = {"weight": ("out_channels", in_name, *kernel), "bias": ("out_channels",)}.get(leaf)
    elif isinstance(module, nn.Embedding):
        names = {"weight": ("num_embeddings", "embedding_dim")}.get(leaf)
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm)):
        names = ("num_features",) if leaf in ("weight", "bias") and len(shape) == 1 else None
    if names is None or len(names) != len(shape):
        return [f"{WEIGHT_PREFIX}{param_name}_dim_{i}" for i in range(len(shape))]
    return [f"{prefix}.{n}" for n in names]


def _hyper_dims(model: SWSModel, site: str, ndim: int) -> list[str]:
    if ndim == 0:
        return []
    if model.group_priors is not None:  # grouped mixtures: sws.<group>.means ...
        if site in MIXTURE_VARS:  # the summary: the groups' components side by side
            return ["group_component"]
        owner = next((p for p in model.group_priors.values() if site in p.site_names), None)
        site = site if owner is None else owner.base_site(site)
    if site in (MEANS, MIXING):
        return ["nonzero_component" if model.prior.zero_component else "component"]
    if site.startswith(SITE_PREFIX):
        return ["component"]
    return [f"{site}_dim_{i}" for i in range(ndim)]


def _extra_dims(name: str, count: int) -> list[str]:
    """Names of per-data-point dimensions: ``output`` (vector targets), ``class`` (probabilities)."""
    return [name] if count == 1 else [f"{name}_{i}" for i in range(count)]


def _resolve_weights(model: SWSModel, weights: Any) -> list[str]:
    """Weight site names from None / "all" / True / a list of parameter or site names."""
    if weights is None or weights is False:
        return []
    if weights is True or weights == "all":
        return list(model.weight_site_names)
    if isinstance(weights, str):
        weights = [weights]
    if not isinstance(weights, Sequence):
        raise TypeError(
            f"weights must be None, 'all' or a list of parameter names, got {type(weights).__name__}"
        )
    sites = []
    for name in weights:
        site = name if name in model.weight_site_names else model.site_name(name)
        if site not in model.weight_site_names:
            raise ValueError(
                f"weights names {name!r}, which is not a parameter with the prior; choose from "
                f"{list(model.prior_param_names)} (or their sites {list(model.weight_site_names)})"
            )
        sites.append(site)
    return sites


def _numpy(value: Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


# ---------------------------------------------------------------------- to_inference_data
def _posterior_group(
    model: SWSModel, draws: Mapping[str, Tensor], weight_sites: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, Any]]:
    """The ``posterior`` arrays of the mixture, hyperparameter and weight sites, their dims and coords."""
    posterior: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    for name in (*MIXTURE_VARS, *model.hyper_site_names):
        value = draws[name]
        posterior[name] = _numpy(value)
        dims[name] = _hyper_dims(model, name, value.dim() - 2)
    for site in weight_sites:
        param = site[len(WEIGHT_PREFIX) :]
        posterior[site] = _numpy(draws[site])
        dims[site] = _parameter_dims(model.net, param, draws[site].shape[2:])
    coords: dict[str, Any] = {"component": np.arange(model.prior.num_components)}
    if model.prior.zero_component:
        coords["nonzero_component"] = np.arange(1, model.prior.num_components)
    if model.group_priors is not None:
        coords["group_component"] = np.arange(draws[MIXTURE_VARS[0]].shape[-1])
    return posterior, dims, coords


def _store_draw(
    arrays: dict[str, np.ndarray],
    key: str,
    shape: tuple[int, ...],
    chain: int,
    draw: int,
    value: np.ndarray,
) -> None:
    """``arrays[key][chain, draw] = value``, the array of shape ``(*shape, *value.shape)`` made on first use."""
    if key not in arrays:
        arrays[key] = np.empty(shape + value.shape, dtype=value.dtype)
    arrays[key][chain, draw] = value


def _per_draw_arrays(
    model: SWSModel,
    draws: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor | None,
    *,
    predictive_mean: bool,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per posterior draw, each ``(chain, draw, data, ...)``: a posterior-predictive sample
    (``"predictive"``), the pointwise log-likelihood of ``y`` when given
    (``"log_likelihood"``) and the likelihood's mean when asked (``"mean"``).

    The predictive samples are seeded with ``seed + 1``; torch's global generator
    is restored afterwards.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(check_seed("seed", seed) + 1)
    shape = tuple(next(iter(draws.values())).shape[:2])
    arrays: dict[str, np.ndarray] = {}
    try:
        for c, d, values, output in _each_draw(model, draws, x):
            likelihood = model.likelihood.distribution(output, values)
            _store_draw(arrays, "predictive", shape, c, d, _numpy(likelihood.sample()))
            if y is not None:
                log_lik = _numpy(likelihood.log_prob(y))
                _store_draw(arrays, "log_likelihood", shape, c, d, log_lik)
            if predictive_mean:
                mean = _numpy(model.likelihood.mean(output, values))
                _store_draw(arrays, "mean", shape, c, d, mean)
    finally:
        torch.random.set_rng_state(generator_state)
    assert "predictive" in arrays, "at least one draw"
    return arrays


def _data_groups(
    model: SWSModel,
    draws: Mapping[str, Tensor],
    x: Any,
    y: Any,
    *,
    predictive_mean: bool,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, list[str]], dict[str, Any]]:
    """What the data ``x`` (and ``y``) add to the InferenceData.

    The groups ``posterior_predictive`` and ``constant_data`` (and with ``y``
    ``log_likelihood`` and ``observed_data``), the posterior variable
    ``predictive_mean`` when asked, the dims of all these variables and the
    ``data`` coordinate.
    """
    x_tensor = _as_inputs(model, x)
    y_tensor = None
    if y is not None:
        x_tensor, y_tensor = as_data(x, y, model)
    arrays = _per_draw_arrays(
        model, draws, x_tensor, y_tensor, predictive_mean=predictive_mean, seed=seed
    )
    predictive = arrays["predictive"]
    groups: dict[str, Any] = {"posterior_predictive": {OBS: predictive}}
    dims = {OBS: ["data"] + _extra_dims("output", predictive.ndim - 3)}
    x_np = _numpy(x_tensor)
    groups["constant_data"] = {"x": x_np}
    dims["x"] = (
        ["data", "feature"]
        if x_np.ndim == 2
        else ["data"] + [f"x_dim_{i}" for i in range(1, x_np.ndim)]
    )
    if y_tensor is not None:
        groups["log_likelihood"] = {OBS: arrays["log_likelihood"]}
        groups["observed_data"] = {OBS: _numpy(y_tensor)}
    posterior: dict[str, np.ndarray] = {}
    if predictive_mean:
        means = arrays["mean"]
        posterior["predictive_mean"] = means
        kind = "class" if isinstance(model.likelihood, Categorical) else "output"
        dims["predictive_mean"] = ["data"] + _extra_dims(kind, means.ndim - 3)
    return groups, posterior, dims, {"data": np.arange(x_np.shape[0])}


def _attrs(result: FitResult | MCMCResult) -> dict[str, str]:
    """Provenance of the InferenceData: libraries, the inference method and the run's settings."""
    method = "NUTS" if isinstance(result, MCMCResult) else f"SVI guide={result.guide_name}"
    return {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "bayes_sws",
        "method": method,
        "config": json.dumps(result.config, default=str, sort_keys=True),
    }


def _from_dict(
    az: Any,
    posterior: dict[str, np.ndarray],
    coords: dict[str, Any],
    dims: dict[str, list[str]],
    attrs: dict[str, str],
    groups: dict[str, Any],
):
    """``az.from_dict`` with the coordinates some variable uses, and the attrs on every group."""
    used = {d for names in dims.values() for d in names}
    coords = {k: v for k, v in coords.items() if k in used}
    idata = az.from_dict(posterior=posterior, coords=coords, dims=dims, attrs=attrs, **groups)
    for group in idata.groups():  # as ArviZ's own converters do, on every group too
        idata[group].attrs.update(
            {
                k: attrs[k]
                for k in ("inference_library", "inference_library_version", "creation_library")
            }
        )
    idata.posterior.attrs.update({"method": attrs["method"], "config": attrs["config"]})
    return idata


def to_inference_data(
    result: FitResult | MCMCResult,
    x: Any = None,
    y: Any = None,
    *,
    num_samples: int = 200,
    num_chains: int = 4,
    weights: None | str | Sequence[str] = None,
    predictive_mean: bool = False,
    seed: int = 0,
):
    """Convert a fit or an MCMC run into :class:`arviz.InferenceData`.

    Parameters
    ----------
    result : FitResult or MCMCResult
    x, y : tensor or array, optional
        Inputs and targets. With ``x``: ``posterior_predictive`` and
        ``constant_data``; with ``y`` too: ``log_likelihood`` (pointwise, for
        ``az.loo``, ``az.waic``, ``az.compare``) and ``observed_data``.
    num_samples : int
        Draws from the guide of a :class:`FitResult`, in all. An
        :class:`MCMCResult` keeps all its chains and draws.
    num_chains : int
        Guide draws are independent; they are split into this many
        pseudo-chains of ``num_samples // num_chains`` draws. With one chain
        ``az.summary`` cannot compute R-hat and logs a shape warning; with
        several, R-hat ≈ 1 and ESS ≈ the number of draws, as they should be
        for independent draws.
    weights : None, "all" or list of str
        Weight sites to include in ``posterior``, by parameter name
        (``"0.weight"``) or site name (``"net.0.weight"``). Default none.
    predictive_mean : bool
        Also store the likelihood's mean at ``x`` per draw as the posterior
        variable ``predictive_mean`` (dims ``data``, ...), an identifiable
        quantity for R-hat and ESS.
    seed : int
        Seeds the guide draws and the posterior-predictive draws.

    Returns
    -------
    arviz.InferenceData
    """
    az = load_arviz()
    _check_result(result)
    model = result.model
    if y is not None and x is None:
        raise ValueError("y was given without x; pass the inputs x the targets y belong to")
    draws = _posterior_draws(result, num_samples, seed, num_chains)
    posterior, dims, coords = _posterior_group(model, draws, _resolve_weights(model, weights))
    groups: dict[str, Any] = {}
    if x is not None:
        data_groups, data_posterior, data_dims, data_coords = _data_groups(
            model, draws, x, y, predictive_mean=predictive_mean, seed=seed
        )
        groups.update(data_groups)
        posterior.update(data_posterior)
        dims.update(data_dims)
        coords.update(data_coords)
    if isinstance(result, MCMCResult):
        groups["sample_stats"] = {k: np.asarray(v) for k, v in result.sample_stats.items()}
    return _from_dict(az, posterior, coords, dims, _attrs(result), groups)


# ---------------------------------------------------------------------- plots
def _mixture_draws(
    result: FitResult | MCMCResult, num_draws: int, seed: int
) -> tuple[tuple[np.ndarray, ...], str]:
    """``(pi, mu, sigma)`` of posterior draws, each ``(draw, M)``, and what they are in words.

    NUTS draws are thinned evenly to ``num_draws``; a variational guide is drawn
    ``num_draws`` times (seeded with ``seed``, the global generators restored
    afterwards, only the prior's sites kept); a point estimate or a prior without
    latent hyperparameters has one mixture.
    """
    num_draws = check_int("num_draws", num_draws, low=1)
    model = result.model
    if isinstance(result, MCMCResult):
        flat = result.sample_posterior(num_draws)
        draws = tuple(_numpy(flat[name]) for name in MIXTURE_VARS)
        return draws, f"density averaged over {draws[0].shape[0]} NUTS draws"
    if result.is_point_estimate or not model.prior.site_names:
        words = "at the MAP" if result.is_point_estimate else "fixed (no latent hyperparameters)"
        return tuple(_numpy(v).reshape(1, -1) for v in result.mixture()), words
    state = get_rng_state()
    try:
        pyro.set_rng_seed(check_seed("seed", seed))
        hyper: dict[str, list[Tensor]] = {name: [] for name in model.prior.site_names}
        for _ in range(num_draws):  # one at a time: the weights of a draw are dropped at once
            draw = result.sample_posterior(1)
            for name, values in hyper.items():
                values.append(draw[name])
    finally:
        set_rng_state(state)
    stacked = {name: torch.cat(values) for name, values in hyper.items()}
    mixture = _mixture_of_draws(model, stacked, num_draws)
    draws = tuple(_numpy(mixture[name]) for name in MIXTURE_VARS)
    return draws, f"density averaged over {num_draws} draws of the {result.guide_name} guide"


def _weights_and_mixture(
    result_or_net: Any, mixture: Any, num_draws: int, seed: int
) -> tuple[dict[str, np.ndarray], Any, tuple[str, str]]:
    """The weights to histogram, the mixture, and what each is in words (for the legend)."""
    if isinstance(result_or_net, (FitResult, MCMCResult)):
        model = result_or_net.model
        median = result_or_net.median()
        arrays = {n: _numpy(median[model.site_name(n)]) for n in model.prior_param_names}
        if mixture is not None:
            return arrays, mixture, ("posterior median", "as given")
        mixture, words = _mixture_draws(result_or_net, num_draws, seed)
        return arrays, mixture, ("posterior median", words)
    if isinstance(result_or_net, SWSModel):
        params = result_or_net.parameters_with_prior()
        arrays = {n: _numpy(p) for n, p in params.items()}
    elif isinstance(result_or_net, nn.Module):
        arrays = {n: _numpy(p) for n, p in result_or_net.named_parameters() if p.dim() >= 2}
    elif isinstance(result_or_net, Mapping):
        arrays = {
            n: np.asarray(_numpy(v) if torch.is_tensor(v) else v) for n, v in result_or_net.items()
        }
    else:
        raise TypeError(
            "plot_mixture_over_histogram needs a FitResult, MCMCResult, SWSModel, nn.Module or a "
            f"dict name -> weights, got {type(result_or_net).__name__}"
        )
    return arrays, mixture, ("current values", "as given")


def _mixture_arrays(mixture: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pi, mu, sigma)``, each ``(draw, M)``: one mixture is one draw."""
    if isinstance(mixture, Mapping):
        mixture = (mixture["pi"], mixture["mu"], mixture["sigma"])
    if not isinstance(mixture, (tuple, list)) or len(mixture) != 3:
        raise TypeError(
            "mixture must be a Mixture, a (pi, mu, sigma) triple or a dict with those keys"
        )
    pi, mu, sigma = (
        np.asarray(_numpy(v) if torch.is_tensor(v) else v, dtype=np.float64) for v in mixture
    )
    if not (pi.shape == mu.shape == sigma.shape) or pi.ndim > 2:
        raise ValueError(
            "pi, mu, sigma must have one entry per component (or one row per posterior draw), "
            f"got {pi.shape}, {mu.shape}, {sigma.shape}"
        )
    return (
        pi.reshape(-1, pi.shape[-1]),
        mu.reshape(-1, mu.shape[-1]),
        sigma.reshape(-1, pi.shape[-1]),
    )


def _mixture_curves(
    pi: np.ndarray, mu: np.ndarray, sigma: np.ndarray, grid: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""Per component, averaged over the draws: the density and the probability of each bin.

    Returns :math:`\pi_j \mathcal N(w \mid \mu_j, \sigma_j^2)` on ``grid``
    (grid, M) and :math:`\pi_j [\Phi((e_{k+1} - \mu_j)/\sigma_j) - \Phi((e_k - \mu_j)/\sigma_j)]`
    for the bins between ``edges`` (bins, M).
    """
    pi_t, mu_t, sigma_t = (torch.as_tensor(a, dtype=torch.float64) for a in (pi, mu, sigma))
    terms = log_joint_densities(torch.as_tensor(grid)[:, None], torch.log(pi_t), mu_t, sigma_t)
    density = torch.exp(terms).mean(1).numpy()  # grid S M -> grid M, (5.137)
    return density, mixture_bin_mass(pi, mu, sigma, edges)


def mixture_bin_mass(pi: Any, mu: Any, sigma: Any, edges: Any) -> np.ndarray:
    r"""Each component's probability of each bin, averaged over the draws: shape ``(bins, M)``.

    :math:`\pi_j [\Phi((e_{k+1} - \mu_j)/\sigma_j) - \Phi((e_k - \mu_j)/\sigma_j)]`
    for the bins between ``edges``; ``pi``, ``mu``, ``sigma`` are ``(draws, M)``
    (one mixture: one draw). ``n`` times the sum over components is the expected
    count of each bin for ``n`` weights drawn from the mixture.
    """
    pi_t, mu_t, sigma_t = (torch.as_tensor(a, dtype=torch.float64) for a in (pi, mu, sigma))
    cdf = torch.special.ndtr((torch.as_tensor(edges)[:, None, None] - mu_t) / sigma_t)  # edges S M
    return (pi_t * (cdf[1:] - cdf[:-1])).mean(1).numpy()


def _label_clipped_peaks(ax: Any, grid: np.ndarray, curve: np.ndarray, top: float) -> None:
    """Print the height of every peak of ``curve`` above the y-axis' ``top``, where it leaves the axes."""
    padded = np.concatenate([[-np.inf], curve, [-np.inf]])
    peaks = (curve >= padded[:-2]) & (curve > padded[2:]) & (curve > top)
    for i in np.flatnonzero(peaks):
        ax.annotate(
            f"peak {curve[i]:.4g} ↑",
            xy=(grid[i], top),
            xytext=(3, -3),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=7,
            color="tab:red",
        )


def _mixture_panel(
    ax: Any, values: np.ndarray, edges: np.ndarray, grid: np.ndarray, curves: tuple, mu_marks: Any
) -> list:
    """One histogram with the mixture's expected counts over it (see :func:`plot_mixture_over_histogram`).

    Returns the artists for the legend: bars, smooth curve, steps (and the means' markers).
    """
    from matplotlib.ticker import NullFormatter

    density, mass = curves
    counts, _, bars = ax.hist(values, bins=edges, color="0.75", label="weights")
    scale = values.size * (edges[1] - edges[0])
    expected = scale * density.sum(-1)
    per_bin = values.size * mass.sum(-1)
    bottom = min(0.5, 0.05 * expected.max())
    top = 3 * max(counts.max(), per_bin.max(), 1.0)
    handles = [bars, *ax.plot(grid, expected, color="tab:red", lw=1.5, label="mixture")]
    handles.append(ax.stairs(per_bin, edges, color="black", lw=0.9, label="expected count per bin"))
    if mu_marks is not None:
        for j in range(density.shape[1]):
            ax.plot(grid, scale * density[:, j], color="tab:blue", lw=0.6, ls="--", alpha=0.7)
        marks = np.full_like(mu_marks, 1.4 * bottom)
        handles += ax.plot(mu_marks, marks, "v", color="tab:blue", ms=4, label="means")
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(NullFormatter())  # 10^0 always lies in [bottom, top]
    ax.set_ylim(bottom, top)
    _label_clipped_peaks(ax, grid, expected, top)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("weight")
    ax.set_ylabel("count per bin (log scale)")
    return handles


def plot_mixture_over_histogram(
    result_or_net: Any,
    mixture: Any = None,
    *,
    per_layer: bool = True,
    bins: int | None = None,
    components: bool = True,
    title: str | None = None,
    num_draws: int = 200,
    seed: int = 0,
):
    r"""The learned mixture over the histogram of the weights, on the histogram's scale.

    Two curves, both in counts per bin on a log axis: the smooth
    :math:`n\,\Delta\, \bar p(w)` for :math:`n` weights and bin width
    :math:`\Delta`, and the expected count of each bin,
    :math:`n \int_{\text{bin}} \bar p(w)\,dw` as steps, the like of the bars
    (Ullrich et al. 2017, Fig. 1 margins). A component narrower than a bin has a
    smooth peak far above its bin's count; the y-axis stops at three times the
    highest bar or step and such a peak is labelled with its height.

    :math:`\bar p` is the mixture density averaged over posterior draws of
    :math:`(\pi, \mu, \sigma)` for a result (NUTS draws, or draws of a
    variational guide; the MAP's mixture for point estimates): it is what the
    posterior says about the weights, where the mixture at averaged parameters
    can put a component where no draw has one. The legend says which weights and
    which mixture are drawn.

    Parameters
    ----------
    result_or_net : FitResult, MCMCResult, SWSModel, nn.Module or dict
        Where the weights come from: a result's posterior median weights, a
        model's or network's current weights (parameters with two or more
        dimensions for a bare network), or a dict name -> weights.
    mixture : Mixture or ``(pi, mu, sigma)``, optional
        Default: a result's posterior draws of the mixture; required otherwise.
        Arrays of shape ``(draws, M)`` are averaged as draws.
    per_layer : bool
        One panel per tensor after the pooled panel.
    bins : int, optional
        Default: about two per √(number of weights), between 10 and 100, so that
        small layers still show the curve above one count.
    components : bool
        Also draw each weighted component and mark the means (their median over
        draws).
    num_draws, seed : int
        Posterior draws of the mixture to average (NUTS draws are thinned to
        this many) and the seed of a guide's draws.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    arrays, mixture, (weights_words, mixture_words) = _weights_and_mixture(
        result_or_net, mixture, num_draws, seed
    )
    if mixture is None:
        raise ValueError("mixture is required unless result_or_net is a FitResult or MCMCResult")
    if not arrays:
        raise ValueError("no weights to plot")
    pi, mu, sigma = _mixture_arrays(mixture)
    panels = [("all weights", np.concatenate([a.reshape(-1) for a in arrays.values()]))]
    if per_layer and len(arrays) > 1:
        panels += [(name, a.reshape(-1)) for name, a in arrays.items()]
    pooled = panels[0][1]
    mu_marks, sigma_median = np.median(mu, axis=0), np.median(sigma, axis=0)
    lo = min(pooled.min(), (mu_marks - 3 * sigma_median).min())
    hi = max(pooled.max(), (mu_marks + 3 * sigma_median).max())
    if bins is None:
        bins = int(np.clip(2 * math.sqrt(pooled.size), 10, 100))
    edges = np.linspace(lo, hi, bins + 1)
    # the means join the grid so that a component narrower than its spacing shows its peak
    grid = np.union1d(np.linspace(lo, hi, 800), mu_marks[(mu_marks > lo) & (mu_marks < hi)])
    curves = _mixture_curves(pi, mu, sigma, grid, edges)

    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    legend_cols = 1 if ncols == 1 else 2
    legend_height = 0.2 * math.ceil((4 if components else 3) / legend_cols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + legend_height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    handles: list = []
    for ax, (name, values) in zip(axes, panels):
        drawn = _mixture_panel(ax, values, edges, grid, curves, mu_marks if components else None)
        handles = handles or drawn
        ax.set_title(f"{name} ({values.size} weights)", fontsize=9)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    labels = [
        f"weights ({weights_words})",
        f"mixture n·Δ·p(w), {mixture_words}",
        "mixture: expected count per bin",
        "component means" + ("" if pi.shape[0] == 1 else " (median over draws)"),
    ]
    fig.legend(
        handles, labels[: len(handles)], loc="outside lower center", ncols=legend_cols, fontsize=8
    )
    if title:
        fig.suptitle(title)
    return fig


def _nuts_loss_figure(result: MCMCResult, title: str | None):
    """−lp of every draw, one line per chain."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.5), layout="constrained")
    ax = fig.add_subplot()
    lp = np.asarray(result.sample_stats["lp"])
    for c in range(lp.shape[0]):
        ax.plot(-lp[c], lw=0.8, label=f"chain {c}")
    ax.set_xlabel("draw (after warm-up)")
    ax.set_ylabel("−log joint (unconstrained)")
    ax.legend(fontsize=8)
    ax.set_title(title or "NUTS: negative log density of the draws")
    return fig


def _loss_trace(result: Any) -> tuple[np.ndarray, str, str | None]:
    """The losses of a fit (or a plain sequence), their axis label and the guide's name."""
    if isinstance(result, FitResult):
        losses = np.asarray(result.losses, dtype=np.float64)
        label = "loss (E + λΩ − log p(hyper))" if result.is_point_estimate else "negative ELBO"
        return losses, label, result.guide_name
    losses = np.asarray(result, dtype=np.float64).reshape(-1)
    return losses, "loss", None


def _loss_y_range(losses: np.ndarray) -> tuple[float, float] | None:
    """A y-range for the second half of the run, stretched to the 90th percentile of all steps."""
    tail = losses[losses.size // 2 :]
    tail = tail[np.isfinite(tail)]
    if not tail.size:
        return None
    lo, hi = np.percentile(tail, [0.5, 99.5])
    head = losses[np.isfinite(losses)]
    hi = max(hi, np.percentile(head, 90)) if head.size else hi
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _clipped_note(losses: np.ndarray, y_range: tuple[float, float] | None) -> str:
    """Words for the steps whose loss lies outside ``y_range`` ('' when none does)."""
    if y_range is None:
        return ""
    finite = losses[np.isfinite(losses)]
    above, below = finite[finite > y_range[1]], finite[finite < y_range[0]]
    parts = [f"{above.size} steps above (max {above.max():.4g})"] if above.size else []
    parts += [f"{below.size} steps below (min {below.min():.4g})"] if below.size else []
    return "y-axis clipped: " + ", ".join(parts) + "; top: the whole run" if parts else ""


def _whole_run_panel(ax: Any, losses: np.ndarray, y_range: tuple[float, float]) -> None:
    """Every step, the zoomed range shaded; a log axis when the losses span more than a decade
    (symlog when a loss is ≤ 0)."""
    ax.plot(np.arange(losses.size), losses, color="tab:blue", lw=0.6)
    finite = losses[np.isfinite(losses)]
    if (finite <= 0).any():
        scale = "symlog"
    else:
        scale = "log" if finite.max() > 10 * finite.min() else "linear"
    ax.set_yscale(scale)
    ax.axhspan(*y_range, color="0.85", zorder=0)
    ax.set_ylabel("whole run" if scale == "linear" else f"whole run ({scale})", fontsize=8)
    ax.tick_params(labelsize=7, labelbottom=False)


def plot_loss(
    result: FitResult | MCMCResult | Sequence[float] | np.ndarray, *, title: str | None = None
):
    """The loss trace of a fit (negative ELBO, or the MAP objective), or −lp per NUTS chain.

    The raw trace is drawn faintly with a moving average over it; the y-range
    follows the second half of the run so a large initial loss does not flatten
    the curve. When that range leaves steps out, the title says how many and
    how far, and a panel on top shows the whole run on a log axis (symlog when a
    loss is ≤ 0) with the zoomed range shaded.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    if isinstance(result, MCMCResult):
        return _nuts_loss_figure(result, title)
    losses, label, name = _loss_trace(result)
    if losses.size == 0:
        raise ValueError("no losses to plot")
    y_range = _loss_y_range(losses)
    note = _clipped_note(losses, y_range)
    fig = Figure(figsize=(6.0, 4.8 if note else 3.5), layout="constrained")
    if note:
        assert y_range is not None  # a note needs a range
        top, ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 2.6))
        _whole_run_panel(top, losses, y_range)
    else:
        ax = fig.add_subplot()
    steps = np.arange(losses.size)
    ax.plot(steps, losses, color="tab:blue", lw=0.6, alpha=0.35)
    window = max(1, losses.size // 50)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(
            steps[window - 1 :],
            smooth,
            color="tab:blue",
            lw=1.5,
            label=f"moving average ({window})",
        )
        ax.legend(fontsize=8)
    if y_range is not None:
        ax.set_ylim(*y_range)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    heading = title or (f"fit, guide={name!r}" if name else "loss")
    if note:
        fig.suptitle(f"{heading}\n{note}", fontsize=9)
    else:
        ax.set_title(heading)
    return fig


def _forest_rows(values: Any) -> tuple[list[str], np.ndarray]:
    """One row per entry of a posterior variable: its labels and its draws ``(row, chain, draw)``."""
    array = np.asarray(values.values, dtype=np.float64)
    rows = array.reshape(array.shape[0], array.shape[1], -1).transpose(2, 0, 1)
    coords = [values[dim].values for dim in values.dims[2:]]
    labels = [", ".join(str(c) for c in entry) for entry in itertools.product(*coords)]
    return labels, rows


def _interval_text(median: float, lo: float, hi: float) -> str:
    """``median [lo, hi]`` with enough digits to tell the three apart (two in the HDI's width)."""
    if not hi > lo:
        return f"{median:.4g} (fixed)"
    largest = max(abs(median), abs(lo), abs(hi))
    if 1e-3 <= largest < 1e4:
        decimals = int(np.clip(1 - math.floor(math.log10(hi - lo)), 0, 8))
        return f"{median:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"
    digits = int(
        np.clip(math.floor(math.log10(largest)) - math.floor(math.log10(hi - lo)) + 2, 2, 6)
    )
    return f"{median:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def _forest_panel(ax: Any, name: str, values: Any, hdi_prob: float) -> None:
    """Rows of HDIs of one variable, each standardised by its own posterior median and sd.

    The band is the HDI of all chains, a thin line the HDI of one chain (dot: its
    median); the text on the right gives median and HDI in the variable's units.
    Lines carry ``gid`` ``"{name}[{row}] all"`` and ``"{name}[{row}] chain {c}"``.
    """
    from matplotlib.transforms import blended_transform_factory

    hdi = load_arviz().hdi
    labels, rows = _forest_rows(values)
    num_chains = rows.shape[1]
    offsets = np.linspace(-0.3, 0.3, num_chains) if num_chains > 1 else np.zeros(1)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    reach = 2.5
    for j, draws in enumerate(rows):
        pooled = draws.reshape(-1)
        median, sd = float(np.median(pooled)), float(pooled.std())
        lo, hi = hdi(pooled, hdi_prob=hdi_prob)
        ax.text(1.03, j, _interval_text(median, lo, hi), transform=right, va="center", fontsize=7)
        if not sd > 0:
            ax.plot([0.0], [j], "D", color="0.4", ms=3, gid=f"{name}[{j}] fixed")
            continue
        band = ((lo - median) / sd, (hi - median) / sd)
        ax.plot(
            band,
            (j, j),
            color="tab:blue",
            lw=7,
            alpha=0.25,
            solid_capstyle="butt",
            gid=f"{name}[{j}] all",
        )
        for c, chain in enumerate(draws):
            z = (hdi(chain, hdi_prob=hdi_prob) - median) / sd
            y = j + offsets[c]
            ax.plot(z, (y, y), color="tab:blue", lw=1, gid=f"{name}[{j}] chain {c}")
            ax.plot([(np.median(chain) - median) / sd], [y], "o", color="tab:blue", ms=2.5)
            reach = max(reach, *np.abs(z))
    ax.axvline(0.0, color="0.7", lw=0.6, zorder=0)
    ax.set_xlim(-1.1 * reach, 1.1 * reach)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("(draw − median) / sd, per row", fontsize=8)
    ax.set_title(name, fontsize=10)


def _forest_figure(posterior: Any, var_names: Sequence[str], hdi_prob: float):
    """One panel per variable, one row per entry: readable at any number of components."""
    from matplotlib.figure import Figure

    num_rows = max(
        int(np.prod([posterior[v].sizes[d] for d in posterior[v].dims[2:]])) for v in var_names
    )
    fig = Figure(
        figsize=(3.7 * len(var_names), max(2.4, 1.3 + 0.24 * num_rows)), layout="constrained"
    )
    axes = fig.subplots(1, len(var_names), squeeze=False)[0]
    for ax, name in zip(axes, var_names):
        _forest_panel(ax, name, posterior[name], hdi_prob)
    fig.suptitle(
        f"{hdi_prob:.0%} HDI of all chains (band) and of each chain (line, dot: its median); "
        "right: median [HDI]",
        fontsize=8,
    )
    return fig


#: Columns of :func:`plot_hyperposterior`'s ``kind="posterior"`` grid, and one panel's inches.
POSTERIOR_COLUMNS = 8
_PANEL_INCHES = (1.75, 1.6)


def _varying_entries(
    posterior: Any, var_names: Sequence[str]
) -> list[tuple[str, dict | None, int]]:
    """``(name, coords, count)`` per variable: the entries whose draws vary (coords ``None``: a scalar)."""
    selections: list[tuple[str, dict | None, int]] = []
    for name in var_names:
        values = posterior[name]
        if values.ndim != 3:
            selections.append((name, None, 1))
            continue
        dim = values.dims[2]
        spread = values.std(dim=("chain", "draw")).values
        kept = [c for c, s in zip(values[dim].values, spread) if s > 0]
        selections.append((name, {dim: kept}, len(kept)))
    return selections


def _density_figure(idata: Any, posterior: Any, var_names: Sequence[str], hdi_prob: float):
    """``az.plot_posterior`` per entry that varies (the zero component's fixed mean has none).

    Small multiples: each variable's entries fill rows of at most
    :data:`POSTERIOR_COLUMNS` panels, so the width stays under 14 inches and the
    height grows by a row of panels per ``POSTERIOR_COLUMNS`` components.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    az = load_arviz()
    selections = _varying_entries(posterior, var_names)
    ncols = min(max(max(n for _, _, n in selections), 1), POSTERIOR_COLUMNS)
    rows = [max(1, -(-n // ncols)) for _, _, n in selections]
    width, height = _PANEL_INCHES
    fig = Figure(figsize=(width * ncols, height * sum(rows)), layout="constrained")
    grid = fig.subplots(sum(rows), ncols, squeeze=False)
    first = 0
    for (name, coords, size), count in zip(selections, rows):
        axes = grid[first : first + count].reshape(-1)
        first += count
        if size:
            az.plot_posterior(
                idata,
                var_names=[name],
                coords=coords,
                hdi_prob=hdi_prob,
                ax=axes[:size] if size > 1 else axes[0],
                textsize=7,
            )
        labels = [name] if coords is None else [f"{name}[{c}]" for c in next(iter(coords.values()))]
        for ax, label in zip(axes, labels):
            ax.set_title(label, fontsize=8)  # one line (ArviZ puts the index on a second)
            ax.xaxis.set_major_locator(MaxNLocator(3))
        for ax in axes[size:]:
            ax.set_visible(False)
    return fig


def plot_hyperposterior(
    idata: Any,
    *,
    var_names: Sequence[str] = MIXTURE_VARS,
    kind: str = "forest",
    hdi_prob: float = 0.94,
):
    """Posterior of the mixture: one panel per variable (``sws.pi``, ``sws.mu``, ``sws.sigma``).

    The forest has one row per component. Each row is standardised by its own
    posterior median and standard deviation, so an interval a thousand times
    narrower than the spread of the components is as visible as a wide one and
    the chains can be compared; the median and HDI in the variable's units are
    printed beside each row. The figure grows by about a quarter inch per row.

    Parameters
    ----------
    idata : arviz.InferenceData
        From :func:`to_inference_data`.
    var_names : sequence of str
        Default ``sws.pi``, ``sws.mu``, ``sws.sigma``.
    kind : {"forest", "posterior"}
        The forest above, or ``az.plot_posterior``: one density per component
        (with its mean and HDI), in rows of at most :data:`POSTERIOR_COLUMNS`
        small panels per variable; a fixed entry (the zero component's mean) has none.
    hdi_prob : float
        Probability mass of the highest-density intervals.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if kind not in ("forest", "posterior"):
        raise ValueError(f"kind must be 'forest' or 'posterior', got {kind!r}")
    posterior = getattr(idata, "posterior", None)
    if posterior is None:
        raise ValueError("idata has no posterior group; build it with to_inference_data")
    missing = [v for v in var_names if v not in posterior]
    if missing:
        raise ValueError(f"idata.posterior has no {missing}; it has {list(posterior.data_vars)}")
    if kind == "forest":
        return _forest_figure(posterior, var_names, hdi_prob)
    return _density_figure(idata, posterior, var_names, hdi_prob)
