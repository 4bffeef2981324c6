"""``SCVI``: the scvi-tools model on AnnData, trained by the sbi_vi engine."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from sbi_vi.singlecell.differential import DEMixin
from sbi_vi.singlecell.evaluation import EvaluationMixin
from sbi_vi.singlecell.module import VAE
from sbi_vi.singlecell.program import SampleMixin
from sbi_vi.singlecell.vaemixin import VAEMixin
from sbi_vi.vi.divergences import DIVERGENCES, Divergence, build_divergence

__all__ = ["SCVI"]

_SUPPORTED = ("rKL", "IW", "alpha")


class SCVI(EvaluationMixin, DEMixin, SampleMixin, VAEMixin):
    """single-cell Variational Inference (Lopez et al., 2018) on the sbi_vi engine.

    The scvi-tools API: ``SCVI.setup_anndata(adata, ...)``, ``SCVI(adata, ...)``,
    ``train()``, then ``get_latent_representation()``, ``get_normalized_expression()``,
    ``differential_expression()``, ... The encoder is an engine family (a diagonal Gaussian
    by default) and the objective is an engine divergence on ``[particles, cells]`` log
    densities: ``"rKL"`` (the ELBO, as scVI), ``"IW"`` (the IWAE bound) or ``"alpha"``.

    Args:
        adata: An AnnData of raw counts set up with :meth:`setup_anndata`.
        n_hidden: Hidden width of encoder and decoder.
        n_latent: Dimension of the latent space.
        n_layers: Hidden layers of encoder and decoder.
        dropout_rate: Dropout of the encoder.
        dispersion: ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``.
        gene_likelihood: ``"zinb"``, ``"nb"`` or ``"poisson"``.
        latent_distribution: ``"normal"`` or ``"ln"`` (logistic normal).
        divergence: ``"rKL"``, ``"IW"`` or ``"alpha"``.
        divergence_kwargs: Options of the divergence (``K``, ``dreg``, ``alpha``,
            ``stick_the_landing``).
        **model_kwargs: Module options: ``use_observed_lib_size`` (default True),
            ``encode_covariates``, ``deeply_inject_covariates``, ``use_batch_norm``,
            ``use_layer_norm``, ``log_variational``, ``q`` (the encoder family: a name of
            the engine's families) and ``q_kwargs``.

    Example:
        >>> from sbi_vi.singlecell import SCVI, synthetic_counts
        >>> adata = synthetic_counts(60, 30, n_de_genes=4, seed=0)
        >>> SCVI.setup_anndata(adata, batch_key="batch")
        >>> model = SCVI(adata, n_latent=2, n_hidden=16)
        >>> model.train(max_epochs=2, show_progress_bar=False, seed=0)
        >>> model.get_latent_representation().shape
        (60, 2)
    """

    def __init__(
        self,
        adata: Any,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
        latent_distribution: Literal["normal", "ln"] = "normal",
        divergence: str = "rKL",
        divergence_kwargs: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ):
        if divergence not in DIVERGENCES:
            raise ValueError(
                f"`divergence` must be one of {', '.join(map(repr, _SUPPORTED))}; "
                f"got {divergence!r}."
            )
        if divergence not in _SUPPORTED:
            raise ValueError(
                f"`divergence={divergence!r}` needs draws from the exact posterior of every "
                f"cell, which a VAE does not have; use one of {', '.join(_SUPPORTED)}."
            )
        build_divergence(divergence, **(divergence_kwargs or {}))  # fail early on options
        super().__init__(
            adata,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            latent_distribution=latent_distribution,
            divergence=divergence,
            divergence_kwargs=dict(divergence_kwargs or {}),
            **model_kwargs,
        )

    def _build_module(
        self,
        *,
        divergence: str = "rKL",
        divergence_kwargs: dict[str, Any] | None = None,
        library_log_means: Any = None,
        library_log_vars: Any = None,
        **params: Any,
    ) -> VAE:
        setup = self.setup
        observed = params.get("use_observed_lib_size", True)
        if not observed and library_log_means is None:
            data = self._cell_data(None)
            library_log_means, library_log_vars = data.library_log_stats(np.arange(data.n_obs))
        self._library_priors = (library_log_means, library_log_vars)
        return VAE(
            n_input=setup.n_vars,
            n_batch=setup.n_batch,
            n_labels=setup.n_labels,
            n_continuous_cov=setup.n_continuous_cov,
            n_cats_per_cov=setup.n_cats_per_cov,
            library_log_means=None
            if library_log_means is None
            else torch.as_tensor(library_log_means),
            library_log_vars=None
            if library_log_vars is None
            else torch.as_tensor(library_log_vars),
            **params,
        )

    def _module_extra(self) -> dict[str, Any]:
        means, variances = self._library_priors
        if means is None:
            return {}
        return {
            "library_log_means": torch.as_tensor(means),
            "library_log_vars": torch.as_tensor(variances),
        }

    def _divergence(self) -> Divergence:
        params = self.init_params_
        return build_divergence(params["divergence"], **params["divergence_kwargs"])
