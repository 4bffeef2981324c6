"""``sample_posterior``: site-by-site posterior summaries of a fitted model.

The guide is drawn ``num_samples`` times in one vectorised pass (the particle plate; no
loop over samples) and the model runs only where a requested site needs it. With
``batch_size`` the *observation plate* is processed in chunks: global sites are drawn once
and reused for every chunk, local sites are drawn per chunk and concatenated along their
plate dim, so every site comes back in its full plain shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sbi_vi._checks import check_positive_int
from sbi_vi.ppl.infer.draws import posterior_samples, resolve_obs_plate, seeded, select_sites

if TYPE_CHECKING:
    from sbi_vi.ppl.infer.svi import SVI

__all__ = ["DEFAULT_SUMMARIES", "sample_posterior"]


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

    Returns:
        ``{summary name: {site: np.ndarray of the site's shape}}`` — by default the keys
        ``"means"``, ``"stds"``, ``"q05"``, ``"q95"`` — plus ``"posterior_samples"`` when
        ``return_samples``.

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
        draws = posterior_samples(
            svi,
            args,
            kwargs,
            num_samples,
            sites,
            obs_plate=plate,
            batch_size=batch_size,
            return_observed=return_observed,
        )
    samples = {s: v.cpu().numpy() for s, v in draws.items()}
    results: dict[str, Any] = {
        name: {s: np.asarray(fun(v, axis=0)) for s, v in samples.items()}
        for name, fun in summaries.items()
    }
    if return_samples:
        results["posterior_samples"] = samples
    return results
