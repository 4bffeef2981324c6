"""``sample_posterior``: site-by-site posterior summaries of a fitted model.

The guide is drawn ``num_samples`` times in one vectorised pass (the particle plate; no
loop over samples) and the model runs only where a requested site needs it. With
``batch_size`` the *observation plate* is processed in chunks: global sites are drawn once
and reused for every chunk, local sites are drawn per chunk and concatenated along their
plate dim, so every site comes back in its full plain shape.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sbi_vi._checks import check_positive_int
from sbi_vi.diagnostics.psis import MAX_KHAT, psis
from sbi_vi.errors import QualityWarning
from sbi_vi.ppl.infer.draws import (
    posterior_samples_and_log_weights,
    resolve_obs_plate,
    seeded,
    select_sites,
)

if TYPE_CHECKING:
    from sbi_vi.ppl.infer.svi import SVI

__all__ = [
    "DEFAULT_SUMMARIES",
    "sample_posterior",
    "weighted_quantile",
    "weighted_summaries",
]


def _q(level: float) -> Callable[..., np.ndarray]:
    def quantile(x: np.ndarray, axis: int = 0) -> np.ndarray:
        return np.quantile(x, level, axis=axis)

    quantile.__name__ = f"q{round(level * 100):02d}"
    return quantile


DEFAULT_SUMMARIES: dict[str, Callable[..., np.ndarray]] = {
    "means": np.mean,
    "stds": np.std,
    "q05": _q(0.05),
    "q95": _q(0.95),
}
"""The summaries of ``sample_posterior``: each is called as ``fun(samples, axis=0)``."""


def weighted_quantile(x: np.ndarray, weights: np.ndarray, level: float) -> np.ndarray:
    """Quantile ``level`` of the draws ``x`` ``[S, *shape]`` under normalised ``weights`` ``[S]``.

    The weighted version of the midpoint rule: the sorted draw ``x_(i)`` sits at cumulative
    weight ``Σ_{j<i} w_(j) + w_(i) / 2`` and the quantile interpolates linearly between
    neighbours (equal weights give Hazen's quantile, ``(i + 1/2) / S``).

    Returns:
        An array of shape ``shape``.
    """
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, 0)
    ws = weights[order]
    at = np.cumsum(ws, axis=0) - 0.5 * ws
    hi = np.clip((at < level).sum(axis=0, keepdims=True), 1, x.shape[0] - 1)
    lo = hi - 1
    a_lo, a_hi = np.take_along_axis(at, lo, 0), np.take_along_axis(at, hi, 0)
    x_lo, x_hi = np.take_along_axis(xs, lo, 0), np.take_along_axis(xs, hi, 0)
    gap = np.where(a_hi > a_lo, a_hi - a_lo, 1.0)
    t = np.clip((level - a_lo) / gap, 0.0, 1.0)
    return (x_lo + t * (x_hi - x_lo))[0]


def weighted_summaries(x: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The default summaries (means, stds, q05, q95) of ``x`` ``[S, *shape]`` under ``weights``.

    Args:
        x: Draws, ``[S, *shape]``.
        weights: Self-normalised importance weights, ``[S]``, summing to one.

    Returns:
        ``{"means", "stds", "q05", "q95"}``, each of shape ``shape``.
    """
    w = weights.reshape(-1, *([1] * (x.ndim - 1)))
    x64 = x.astype(np.float64)
    mean = (w * x64).sum(0)
    std = np.sqrt(np.maximum((w * (x64 - mean) ** 2).sum(0), 0.0))
    return {
        "means": mean.astype(x.dtype),
        "stds": std.astype(x.dtype),
        "q05": weighted_quantile(x64, weights, 0.05).astype(x.dtype),
        "q95": weighted_quantile(x64, weights, 0.95).astype(x.dtype),
    }


def _psis_weights(log_w: Tensor | None, why_not: str | None) -> tuple[Any, str, float | None]:
    """``(normalised weights or None, the flag, k-hat)`` from the draws' log weights."""
    if why_not is not None:
        return None, f"none ({why_not})", None
    if log_w is None:
        return None, "none (the draws have no joint full-data density)", None
    values = log_w.double().cpu()
    if bool(torch.isnan(values).any()) or bool((values == float("inf")).any()):
        return None, "none (the log weights are not finite)", None
    result = psis(values)
    khat = float(result.khat)
    if not khat <= MAX_KHAT:
        return None, f"none (k-hat {khat:.2f} > {MAX_KHAT}: q is too far off to correct)", khat
    weights = result.log_weights.exp().numpy()
    return weights / weights.sum(), "psis", khat


def _resolve_device(use_gpu: bool | int | str | None) -> torch.device | None:
    if use_gpu is None:
        return None
    if use_gpu is False:
        return torch.device("cpu")
    if use_gpu is True:
        if not torch.cuda.is_available():
            raise ValueError("`use_gpu=True` but no CUDA device is available; pass use_gpu=False.")
        return torch.device("cuda")
    if isinstance(use_gpu, int):
        return torch.device(f"cuda:{use_gpu}")
    if isinstance(use_gpu, str):
        return torch.device(use_gpu)
    raise TypeError(f"`use_gpu` must be None, a bool, an int or a str, got {use_gpu!r}.")


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def _on_device(svi: SVI, device: torch.device | None) -> Iterator[None]:
    """Move the store's and the guide's tensors to ``device`` for the block, then back."""
    if device is None:
        yield
        return
    tensors = list(svi.store.parameters())
    if isinstance(svi.guide, torch.nn.Module):
        tensors += list(svi.guide.parameters()) + list(svi.guide.buffers())
    homes = [t.device for t in tensors]
    try:
        for t in tensors:
            t.data = t.data.to(device)
        yield
    finally:
        for t, home in zip(tensors, homes, strict=True):
            t.data = t.data.to(home)


def sample_posterior(
    svi: SVI,
    args: tuple,
    kwargs: dict,
    *,
    num_samples: int = 1000,
    return_sites: Sequence[str] | None = None,
    use_gpu: bool | int | str | None = None,
    batch_size: int | None = None,
    return_observed: bool = False,
    return_samples: bool = False,
    summary_fun: Mapping[str, Callable[..., np.ndarray]] | None = None,
    obs_plate: str | None = None,
    seed: int | None = None,
    importance_weighted: bool = False,
) -> dict[str, Any]:
    """Summarise the posterior of every requested site: means, stds, 5% and 95% quantiles.

    The contract of scvi-tools' ``PyroSampleMixin.sample_posterior``. The guide is drawn
    ``num_samples`` times in one vectorised pass; with ``batch_size`` the observation plate
    is processed in chunks of that many indices (globals drawn once, locals per chunk and
    concatenated along their plate), so memory stays bounded for large data.

    Args:
        svi: The fitted :class:`~sbi_vi.ppl.infer.SVI`.
        args: The model's arguments.
        kwargs: The model's keyword arguments.
        num_samples: Number of posterior draws.
        return_sites: Sites to summarise; default: every latent and deterministic site
            (and the observed ones with ``return_observed``).
        use_gpu: ``None``: where the parameters are; ``False``: CPU; ``True``: the default
            CUDA device; an int or a str: that device. Tensor arguments are moved along.
        batch_size: Indices of the observation plate per chunk (``None``: all at once).
        return_observed: Also draw the observed sites from the posterior predictive.
        return_samples: Add ``"posterior_samples"``: ``{site: (num_samples, *shape)}``.
        summary_fun: ``{name: fun}`` replacing the default summaries; each is called as
            ``fun(samples, axis=0)`` on the ``(num_samples, *shape)`` array.
        obs_plate: Name of the observation plate (found from the model by default, see
            :func:`resolve_obs_plate`).
        seed: Seed of the draws (the caller's RNG is left alone).
        importance_weighted: Correct the default summaries towards the posterior with
            Pareto-smoothed importance weights ``p(x, θ) / q(θ)`` of the same draws (one
            more vectorised pass of the model at full data), when PSIS k̂ ≤ 0.7. The
            result then says what was done: ``"weighting"`` is ``"psis"``, or
            ``"none (<why>)"`` where the weights do not apply — k̂ > 0.7, a custom
            ``summary_fun``, a ``batch_size`` that splits the observation plate (each
            chunk's local draws are separate, so no draw has a joint density), a point
            mass — and ``"khat"`` is k̂ (``None`` when not computed). Draws in
            ``"posterior_samples"`` stay unweighted draws of q; their normalised weights
            come as ``"importance_weights"`` ``(num_samples,)``.

    Returns:
        ``{summary name: {site: np.ndarray of the site's shape}}`` — by default the keys
        ``"means"``, ``"stds"``, ``"q05"``, ``"q95"`` — plus ``"posterior_samples"`` when
        ``return_samples``, and ``"weighting"`` and ``"khat"`` (with
        ``"importance_weights"`` when weighted and ``return_samples``) when
        ``importance_weighted``.

    Raises:
        ValueError: On unknown sites, a bad ``batch_size``, or ``batch_size`` for a model
            without an observation plate.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    summaries = DEFAULT_SUMMARIES if summary_fun is None else summary_fun
    if not isinstance(summaries, Mapping) or not all(
        isinstance(k, str) and callable(f) for k, f in summaries.items()
    ):
        raise TypeError("`summary_fun` must be a dict {name: callable}, e.g. {'means': np.mean}.")
    if not isinstance(importance_weighted, bool):
        raise TypeError(f"`importance_weighted` must be a bool, got {importance_weighted!r}.")
    device = _resolve_device(use_gpu)
    with seeded(seed), torch.no_grad(), _on_device(svi, device):
        if device is not None:
            args, kwargs = _move(args, device), _move(kwargs, device)
        svi.objective.setup(args, kwargs)
        info = svi.objective.info
        assert info is not None
        sites = select_sites(info, return_sites, return_observed)
        plate = resolve_obs_plate(info, obs_plate, svi.model)
        if batch_size is not None and plate is None:
            raise ValueError(
                "`batch_size` splits the observation plate, but the model has none that could "
                "be found; name it with `obs_plate=`."
            )
        why_not = _why_not_weighted(svi, summary_fun, num_samples)
        draws, log_w = posterior_samples_and_log_weights(
            svi,
            args,
            kwargs,
            num_samples,
            sites,
            obs_plate=plate,
            batch_size=batch_size,
            return_observed=return_observed,
            log_weights=importance_weighted and why_not is None,
        )
    samples = {s: v.cpu().numpy() for s, v in draws.items()}
    weights, flag, khat = None, "none", None
    if importance_weighted:
        if why_not is None and log_w is None and batch_size is not None:
            why_not = "batch_size splits the observation plate: no draw is joint"
        weights, flag, khat = _psis_weights(log_w, why_not)
        if weights is None and khat is not None:
            warnings.warn(
                f"importance-weighted summaries were asked for, but PSIS k-hat = {khat:.2f} > "
                f"{MAX_KHAT}: the guide is too far from the posterior for the weights to "
                "correct it, so these are the guide's own (unweighted) summaries and should "
                "not be trusted as posterior summaries. Train longer or use a more flexible "
                "guide (summary['weighting'] says what was done).",
                QualityWarning,
                stacklevel=3,
            )
    if weights is not None:
        per_site = {s: weighted_summaries(v, weights) for s, v in samples.items()}
        results: dict[str, Any] = {
            name: {s: per_site[s][name] for s in samples} for name in DEFAULT_SUMMARIES
        }
    else:
        results = {
            name: {s: np.asarray(fun(v, axis=0)) for s, v in samples.items()}
            for name, fun in summaries.items()
        }
    if return_samples:
        results["posterior_samples"] = samples
    if importance_weighted:
        results["weighting"], results["khat"] = flag, khat
        if weights is not None and return_samples:
            results["importance_weights"] = weights
    return results


def _why_not_weighted(svi: SVI, summary_fun: Any, num_samples: int) -> str | None:
    """Why importance weights cannot apply before drawing (``None``: they may)."""
    if summary_fun is not None:
        return "a custom summary_fun takes no weights"
    if getattr(svi.guide, "is_point_mass", False):
        return "a point-mass guide has no density"
    if num_samples < 2:
        return "PSIS needs at least 2 draws"
    return None
