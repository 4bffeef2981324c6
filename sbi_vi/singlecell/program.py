"""The scVI model and its encoder as a probabilistic program of :mod:`sbi_vi.ppl`.

``SCVI.sample_posterior`` summarises z (and the latent library size) through the PPL
layer's :func:`~sbi_vi.ppl.infer.summary.sample_posterior`, not a copy of it: the module's
generative model becomes a PPL model (latent sites ``z`` and, with a latent library,
``library`` = log ℓ; observed site ``x``, all in the plate ``cells``) and its encoder the
guide, with the module's parameters registered through ``module``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal

from sbi_vi.ppl import module, plate, sample
from sbi_vi.ppl.infer import SVI
from sbi_vi.ppl.infer.summary import sample_posterior as ppl_sample_posterior
from sbi_vi.singlecell.base import BaseSingleCellModel
from sbi_vi.singlecell.loader import CellBatch, resolve_indices
from sbi_vi.singlecell.module import VAE
from sbi_vi.vi.families import DiagonalGaussian, Gaussian

__all__ = ["SampleMixin", "scvi_program"]

OBS_PLATE = "cells"


def _cells(x, batch_index, labels, cat_covs, cont_covs, size_factor, idx) -> CellBatch:
    return CellBatch(
        x=x[idx],
        batch_index=batch_index[idx],
        labels=labels[idx],
        cat_covs=cat_covs[idx],
        cont_covs=cont_covs[idx],
        size_factor=None if size_factor is None else size_factor[idx],
        indices=idx,
    )


def _marginals(vae: VAE, cells: CellBatch):
    """q(z | x) and q(log ℓ | x) of a Gaussian encoder: blocks of its Gaussian (the
    leading block of a Cholesky factor is the Cholesky factor of the leading block)."""
    family = vae.encoder
    base = family(vae.encoder_context(cells)).base
    d = vae.n_latent
    loc = family.shift + family.scale * base.loc
    tril = family.scale.unsqueeze(-1) * base.scale_tril
    q_z = MultivariateNormal(loc[..., :d], scale_tril=tril[..., :d, :d], validate_args=False)
    q_l = None
    if not vae.use_observed_lib_size:
        # the last coordinate's marginal sd is the norm of its row of the Cholesky factor
        q_l = Normal(loc[..., d], tril[..., d, :].norm(dim=-1), validate_args=False)
    return q_z, q_l


def scvi_program(vae: VAE) -> tuple[Callable[..., None], Callable[..., None]]:
    """``(model, guide)`` of the module as PPL programs over the whole data set.

    Both take ``(x, batch_index, labels, cat_covs, cont_covs, size_factor)`` tensors of all
    cells (``x`` ``[N, G]``).

    Raises:
        ValueError: For a flow encoder with a latent library size (its joint q(z, log ℓ)
            has no closed-form marginals).
    """
    if not isinstance(vae.encoder, Gaussian | DiagonalGaussian) and not vae.use_observed_lib_size:
        raise ValueError(
            "sample_posterior needs the marginals q(z | x) and q(log l | x); a flow encoder "
            "with a latent library size has only their joint. Use a Gaussian encoder or "
            "`use_observed_lib_size=True`."
        )
    d = vae.n_latent

    def model(x, batch_index, labels, cat_covs, cont_covs, size_factor) -> None:
        module("scvi", vae)
        with plate(OBS_PLATE, x.shape[0], dim=-1) as idx:
            cells = _cells(x, batch_index, labels, cat_covs, cont_covs, size_factor, idx)
            zero = torch.zeros(len(idx), d, dtype=x.dtype, device=x.device)
            u = sample("z", Independent(Normal(zero, 1.0, validate_args=False), 1))
            if vae.use_observed_lib_size:
                log_library: Tensor = vae.observed_log_library(cells)
            else:
                mean = vae.library_log_means[cells.batch_index]
                var = vae.library_log_vars[cells.batch_index]
                log_library = sample("library", Normal(mean, var.sqrt(), validate_args=False))
            z = torch.softmax(u, -1) if vae.latent_distribution == "ln" else u
            px = vae.generative(z, log_library, cells)
            sample("x", Independent(px, 1), obs=cells.x)

    model.list_obs_plate_vars = {"name": OBS_PLATE}  # type: ignore[attr-defined]

    def guide(x, batch_index, labels, cat_covs, cont_covs, size_factor) -> None:
        module("scvi", vae)
        with plate(OBS_PLATE, x.shape[0], dim=-1) as idx:
            cells = _cells(x, batch_index, labels, cat_covs, cont_covs, size_factor, idx)
            if isinstance(vae.encoder, Gaussian | DiagonalGaussian):
                q_z, q_l = _marginals(vae, cells)
                sample("z", q_z)
                if q_l is not None:
                    sample("library", q_l)
            else:  # a flow over z alone (observed library size)
                sample("z", vae.q(cells))

    return model, guide


class SampleMixin(BaseSingleCellModel):
    """``sample_posterior``: scvi-tools' ``PyroSampleMixin`` summaries of z and ℓ."""

    @torch.no_grad()
    def sample_posterior(
        self,
        num_samples: int = 1000,
        return_sites: Sequence[str] | None = None,
        use_gpu: bool | int | str | None = None,
        batch_size: int | None = None,
        return_observed: bool = False,
        return_samples: bool = False,
        summary_fun: Mapping[str, Callable[..., np.ndarray]] | None = None,
        *,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Posterior summaries of the latent sites, through the PPL layer.

        Runs :func:`sbi_vi.ppl.infer.summary.sample_posterior` on the model and encoder as
        a probabilistic program (see :func:`scvi_program`): ``num_samples`` vectorised
        draws of the encoder, in chunks of ``batch_size`` cells.

        Args:
            num_samples: Posterior draws.
            return_sites: ``["z"]``, ``["library"]`` (latent library only), ``["x"]`` with
                ``return_observed`` (posterior predictive counts); default: the latents.
            use_gpu: Device of the draws (see the PPL function).
            batch_size: Cells per chunk (``None``: all at once).
            return_observed: Also draw the counts from the posterior predictive.
            return_samples: Add ``"posterior_samples"`` ``{site: [num_samples, ...]}``.
            summary_fun: ``{name: fun(samples, axis=0)}`` replacing means/stds/q05/q95.
            adata: AnnData (default: the model's).
            indices: Cells to use.
            seed: Seed of the draws (the caller's RNG is left alone).

        Returns:
            ``{"means": {"z": [n_cells, n_latent], ...}, "stds": ..., "q05": ...,
            "q95": ...}`` (numpy arrays), plus ``"posterior_samples"``.
        """
        data = self._cell_data(adata)
        cells = data.batch(resolve_indices(indices, data.n_obs)).to(self.device)
        args = (
            cells.x,
            cells.batch_index,
            cells.labels,
            cells.cat_covs,
            cells.cont_covs,
            cells.size_factor,
        )
        model, guide = scvi_program(self.module)
        self.module.eval()
        svi = SVI(model, guide)
        return ppl_sample_posterior(
            svi,
            args,
            {},
            num_samples=num_samples,
            return_sites=return_sites,
            use_gpu=use_gpu,
            batch_size=batch_size,
            return_observed=return_observed,
            return_samples=return_samples,
            summary_fun=summary_fun,
            obs_plate=OBS_PLATE,
            seed=seed,
        )
