"""``SCVI``: the scvi-tools model on AnnData, trained by the sbi_vi engine."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from sbi_vi.singlecell.differential import DEMixin
from sbi_vi.singlecell.evaluation import EvaluationMixin
from sbi_vi.singlecell.module import BATCH_KEY, VAE
from sbi_vi.singlecell.nn import EmbeddingKeyError
from sbi_vi.singlecell.program import SampleMixin
from sbi_vi.singlecell.vaemixin import VAEMixin
from sbi_vi.vi.divergences import DIVERGENCES, Divergence, build_divergence

__all__ = ["SCVI"]

_SUPPORTED = ("rKL", "IW", "alpha")
_MODULE_OPTIONS = frozenset(
    name
    for name, p in inspect.signature(VAE).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
) - {"library_log_means", "library_log_vars"}
_FROM_SETUP = (
    "n_input",
    "n_batch",
    "n_labels",
    "n_continuous_cov",
    "n_cats_per_cov",
    "library_log_means",
    "library_log_vars",
)


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
        gene_likelihood: ``"zinb"``, ``"nb"``, ``"poisson"``, or ``"normal"`` (a Gaussian, for
            log-normalised data).
        latent_distribution: ``"normal"`` or ``"ln"`` (logistic normal).
        divergence: ``"rKL"``, ``"IW"`` or ``"alpha"``.
        divergence_kwargs: Options of the divergence (``K``, ``dreg``, ``alpha``,
            ``stick_the_landing``).
        **model_kwargs: Options of the module, :class:`~sbi_vi.singlecell.module.VAE`
            (scvi-tools' ``VAE`` options with their defaults): ``use_observed_lib_size``,
            ``use_size_factor_key`` (default: True when ``setup_anndata`` registered a
            ``size_factor_key``), ``encode_covariates``, ``deeply_inject_covariates``,
            ``batch_representation``, ``batch_embedding_kwargs``, ``use_batch_norm``,
            ``use_layer_norm``, ``log_variational``, ``var_activation``,
            ``extra_encoder_kwargs``, ``extra_decoder_kwargs``, ``extra_payload_autotune``
            (False only); and the encoder family ``q`` (a name of the engine's families)
            with ``q_kwargs``.

    Raises:
        TypeError: An unknown keyword argument (naming it), or one that the AnnData set-up
            determines (``n_batch``, ``n_input``, ``library_log_means``, ...).
        ValueError: An option outside its choices; ``use_size_factor_key=True`` without a
            registered size factor.

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
        gene_likelihood: Literal["zinb", "nb", "poisson", "normal"] = "zinb",
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
        _check_model_kwargs(model_kwargs)
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
        likelihood = params.get("gene_likelihood", "zinb")
        if likelihood != "normal" and not getattr(setup, "is_count_data", True):
            raise ValueError(
                f"`gene_likelihood={likelihood!r}` models counts, but the data set up are not "
                "counts (non-negative whole numbers); use `gene_likelihood='normal'` for "
                "log-normalised data, or set up the layer of raw counts."
            )
        use_size_factor_key = params.pop("use_size_factor_key", None)
        if use_size_factor_key is None:  # scvi-tools: whether a size factor is registered
            use_size_factor_key = setup.size_factor_key is not None
        elif not isinstance(use_size_factor_key, bool):
            raise TypeError(
                f"`use_size_factor_key` must be a bool, got {type(use_size_factor_key).__name__}."
            )
        elif use_size_factor_key and setup.size_factor_key is None:
            raise ValueError(
                "`use_size_factor_key=True` needs size factors; register them with "
                "`SCVI.setup_anndata(adata, size_factor_key=...)`."
            )
        observed = params.get("use_observed_lib_size", True) or use_size_factor_key
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
            use_size_factor_key=use_size_factor_key,
            **params,
        )

    @torch.no_grad()
    def get_batch_representation(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The learnt embedding of each cell's batch (``batch_representation="embedding"``).

        Returns:
            ``[n_cells, embedding_dim]``.

        Raises:
            EmbeddingKeyError: (a ``KeyError`` as in scvi-tools, and a ``ValueError``) if the
                module has no batch embedding (``batch_representation="one-hot"``).
        """
        if BATCH_KEY not in self.module.embeddings_dict:
            raise EmbeddingKeyError(
                "`get_batch_representation` needs a batch embedding: build the model with "
                "`batch_representation='embedding'` (this module has embeddings "
                f"{list(self.module.embeddings_dict)})."
            )
        chunks = [
            self.module.compute_embedding(BATCH_KEY, cells.batch_index).cpu()
            for cells in self._minibatches(adata, indices, batch_size)
        ]
        return torch.cat(chunks).numpy()

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


def _check_model_kwargs(model_kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments that are no module option, naming them (TypeError)."""
    from_setup = sorted(set(model_kwargs) & set(_FROM_SETUP))
    if from_setup:
        raise TypeError(
            f"SCVI() got {', '.join(map(repr, from_setup))}, which the AnnData set-up "
            "determines (as in scvi-tools); remove them."
        )
    unknown = sorted(set(model_kwargs) - _MODULE_OPTIONS)
    if unknown:
        raise TypeError(
            f"SCVI() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"module options: {', '.join(sorted(_MODULE_OPTIONS))}."
        )
