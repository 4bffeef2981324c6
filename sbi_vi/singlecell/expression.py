"""scvi-tools' ``RNASeqMixin``: normalised expression, posterior predictive, correlations.

One decoding routine, :meth:`RNAMixin._decode`, draws ``n_samples`` latents from the encoder
for a minibatch of cells (vectorised over samples, no per-sample loop) and decodes them,
optionally as if every cell were in another batch; every method below reads the decoded
likelihood's parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.stats import rankdata
from torch import Tensor
from torch.distributions import Distribution

from sbi_vi._checks import check_positive_int
from sbi_vi.singlecell.base import BaseSingleCellModel
from sbi_vi.singlecell.counts import CountArray
from sbi_vi.singlecell.de_sampling import importance_draws
from sbi_vi.singlecell.de_settings import ImportanceSettings
from sbi_vi.singlecell.distributions import (
    NegativeBinomial,
    ZeroInflatedNegativeBinomial,
    gamma_sample,
)
from sbi_vi.singlecell.loader import CellBatch, resolve_indices
from sbi_vi.singlecell.normal import NormalLikelihood
from sbi_vi.singlecell.settings import settings

__all__ = ["RNAMixin"]


class RNAMixin(BaseSingleCellModel):
    """Normalised expression, posterior predictive samples, likelihood parameters."""

    # -- helpers -----------------------------------------------------------------------

    def _batch_codes(self, transform_batch: Any) -> list[int | None]:
        """``transform_batch`` (None, a batch category, an int code, or a list) as codes.

        A value is first looked up among the batch categories (as scvi-tools does; an int
        matches the category of the same name); an int that names no category is a code.
        """
        if transform_batch is None:
            return [None]
        items = transform_batch if isinstance(transform_batch, list | tuple) else [transform_batch]
        codes: list[int | None] = []
        names = list(self.setup.batch_categories)
        for item in items:
            if item is None:
                codes.append(None)
            elif str(item) in names and not isinstance(item, bool):
                codes.append(names.index(str(item)))
            elif isinstance(item, int | np.integer) and not isinstance(item, bool):
                if not 0 <= int(item) < len(names):
                    raise ValueError(
                        f"`transform_batch`={item} is neither a batch of the model "
                        f"({names}) nor a code in [0, {len(names)})."
                    )
                codes.append(int(item))
            else:
                raise ValueError(
                    f"`transform_batch`={item!r} is not a batch of the model (batches: {names})."
                )
        return codes

    def _gene_mask(self, gene_list: Sequence[str] | None) -> np.ndarray | slice:
        if gene_list is None:
            return slice(None)
        names = np.asarray(self.setup.var_names)
        wanted = {str(g) for g in gene_list}
        missing = sorted(wanted - set(names))
        if missing:
            raise ValueError(f"`gene_list` has genes the model does not know: {missing[:5]}.")
        return np.flatnonzero(np.isin(names, list(wanted)))  # in the AnnData's gene order

    def _gene_names(self, gene_list: Sequence[str] | None) -> list[str]:
        names = np.asarray(self.setup.var_names)
        return list(names if gene_list is None else names[self._gene_mask(gene_list)])

    @torch.no_grad()
    def _decode(
        self, cells: CellBatch, n_samples: int, transform_batch: int | None = None
    ) -> tuple[Distribution, Tensor]:
        """Decode ``n_samples`` draws of q(z, ℓ | x) per cell: ``(px, log ℓ)``.

        ``px`` has parameters ``[n_samples, B, G]``; ``log ℓ`` is ``[n_samples, B]``
        (or ``[B]`` for the observed library size).
        """
        self.module.eval()
        u = self.module.q(cells).sample((n_samples,))
        z, log_library = self.module.split(u, cells)
        codes = None
        if transform_batch is not None:
            codes = torch.full_like(cells.batch_index, transform_batch)
        return self.module.generative(z, log_library, cells, transform_batch=codes), log_library

    # -- public API --------------------------------------------------------------------

    @torch.no_grad()
    def get_normalized_expression(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Any = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | str = 1,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        weights: Literal["uniform", "importance"] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool = True,
        dataloader: Iterable[Any] | None = None,
        **importance_weighting_kwargs: Any,
    ) -> np.ndarray | pd.DataFrame:
        """Denoised, library-normalised expression ``ρ_n · library_size`` of each cell.

        Args:
            adata: AnnData (default: the model's).
            indices: Cells to use.
            transform_batch: Decode as if in this batch (name or code); a list averages
                over those batches; ``None``: each cell's own batch.
            gene_list: Genes to return (default: all).
            library_size: Scale of the normalised expression, or ``"latent"`` for the
                model's library size (observed or inferred) — the expected counts.
            n_samples: Draws of q(z | x) per cell.
            n_samples_overall: Draw this many cells (with replacement) among ``indices``
                and one sample each.
            weights: With ``n_samples_overall``: ``"uniform"`` (``None``) encoder draws, or
                ``"importance"``: each cell's draws reweighted towards its exact posterior
                by PSIS and resampled, every cell with an equal share (as
                ``differential_expression(weights="importance")``). Without
                ``n_samples_overall`` it has no effect, as in scvi-tools.
            batch_size: Cells per forward pass.
            return_mean: Average over the ``n_samples`` draws.
            return_numpy: Return an array (default: a DataFrame unless the result is 3-D).
            silent: Accepted for compatibility (no progress bar is shown).
            dataloader: Minibatches to use instead of ``adata``/``indices``.
            **importance_weighting_kwargs: Settings of ``weights="importance"``
                (``max_cells``, ``truncation``, ``n_mc_samples``, ``n_mc_samples_per_pass``,
                ``khat_threshold``).

        Returns:
            ``[n_cells, n_genes]`` (DataFrame indexed by cell and gene names), or
            ``[n_samples, n_cells, n_genes]`` when ``n_samples > 1`` and not averaged;
            ``[n_samples_overall, n_genes]`` with ``n_samples_overall``.

        Raises:
            TypeError: An unknown keyword argument.
            ValueError: ``weights`` not among the choices, or ``library_size="latent"``
                with importance weights.
            NotImplementedError: Importance weights with several ``transform_batch``
                values (as scvi-tools).
        """
        del silent
        importance = ImportanceSettings.from_kwargs(importance_weighting_kwargs)
        if weights not in (None, "uniform", "importance"):
            raise ValueError(
                f"`weights` must be 'uniform', 'importance' or None, got {weights!r}."
            )
        n_samples = check_positive_int("n_samples", n_samples)
        adata_ = self._validate_adata(adata)
        idx = resolve_indices(indices, adata_.n_obs)
        if weights == "importance" and n_samples_overall is not None:
            return self._importance_expression(
                adata_, idx, transform_batch, gene_list, library_size,
                check_positive_int("n_samples_overall", n_samples_overall),
                batch_size, importance,
            )  # fmt: skip
        if n_samples_overall is not None:
            # n_samples_overall draws: cells (with replacement) among ``idx``, one latent
            # draw each; an array [n_samples_overall, G'] as scvi-tools returns.
            n_samples_overall = check_positive_int("n_samples_overall", n_samples_overall)
            pick = torch.randint(len(idx), (n_samples_overall,)).numpy()
            idx, n_samples, return_numpy = idx[pick], 1, True
        latent_library = library_size == "latent"
        if not latent_library and not isinstance(library_size, int | float):
            raise ValueError(f"`library_size` must be a number or 'latent', got {library_size!r}.")
        genes = self._gene_mask(gene_list)
        codes = self._batch_codes(transform_batch)
        chunks = []
        for cells in self._minibatches(adata_, idx, batch_size, dataloader):
            per_batch = []
            for code in codes:
                px, _ = self._decode(cells, n_samples, code)
                if latent_library:
                    values = px.mu  # ℓ ρ: the expected counts before zero inflation
                else:
                    values = px.scale * float(library_size)
                per_batch.append(values[..., genes])
            values = torch.stack(per_batch).mean(0)  # [S, B, G']
            chunks.append(values.mean(0) if return_mean else values)
        out = torch.cat(chunks, dim=0 if return_mean else 1).cpu().numpy()
        if not return_mean and n_samples == 1:
            out = out[0]
        if return_numpy is None:
            return_numpy = out.ndim == 3
        if return_numpy or out.ndim == 3:
            return out
        obs_names = np.asarray(adata_.obs_names)[idx] if dataloader is None else None
        return pd.DataFrame(out, index=obs_names, columns=self._gene_names(gene_list))

    def _importance_expression(
        self,
        adata: Any,
        idx: np.ndarray,
        transform_batch: Any,
        gene_list: Sequence[str] | None,
        library_size: float | str,
        n_samples_overall: int,
        batch_size: int | None,
        importance: ImportanceSettings,
    ) -> np.ndarray:
        """``n_samples_overall`` importance-resampled draws of ``ρ · library_size``."""
        codes = self._batch_codes(transform_batch)
        if len(codes) > 1:
            raise NotImplementedError(
                "Importance weights cannot be computed when expression levels are averaged "
                "across batches (several `transform_batch` values)."
            )
        if not isinstance(library_size, int | float):
            raise ValueError(
                f"`weights='importance'` needs a numeric `library_size`, got {library_size!r}."
            )
        draws = importance_draws(
            self, adata, idx, codes, n_samples_overall,
            batch_size or settings.batch_size, importance, "`indices`",
        )  # fmt: skip
        genes = self._gene_mask(gene_list)
        return draws.scales[:n_samples_overall][:, genes] * float(library_size)

    @torch.no_grad()
    def posterior_predictive_sample(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Any = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        return_sparse: bool = False,
        dataloader: Iterable[Any] | None = None,
        silent: bool = True,
    ) -> CountArray | sp.csr_matrix:
        """Counts drawn from the posterior predictive ``p(x̃ | x)`` of each cell.

        Each draw takes z, ℓ from q(· | x), decodes them and samples counts from the
        likelihood, all vectorised over draws.

        Args:
            transform_batch: Decode as if in this batch; a list averages the draws of
                those batches (as scvi-tools).
            n_samples: Draws per cell.
            gene_list: Genes to return.
            return_sparse: Return a ``scipy.sparse.csr_matrix`` (``n_samples=1`` only;
                counts are mostly zeros).
            silent: scvi-tools' switch of a progress bar; there is none here.

        Returns:
            ``[n_cells, n_genes]`` for one draw, ``[n_cells, n_genes, n_samples]`` else: a
            numpy array that also has scvi-tools' ``todense()`` / ``to_scipy_sparse()``
            (:class:`~sbi_vi.singlecell.counts.CountArray`).
        """
        del silent
        n_samples = check_positive_int("n_samples", n_samples)
        if return_sparse and n_samples > 1:
            raise ValueError("`return_sparse=True` needs `n_samples=1` (a matrix is 2-D).")
        genes = self._gene_mask(gene_list)
        codes = self._batch_codes(transform_batch)
        chunks = []
        for cells in self._minibatches(adata, indices, batch_size, dataloader):
            draws = [self._decode(cells, n_samples, code)[0].sample() for code in codes]
            counts = draws[0] if len(draws) == 1 else torch.stack(draws).mean(0)
            chunks.append(counts[..., genes].cpu().permute(1, 2, 0).numpy())  # [B, G', S] view
        out = np.concatenate(chunks)  # numpy's strided copy: ~2.5x torch.cat of the permutes
        if n_samples == 1:
            out = out[..., 0]
            if return_sparse:
                return sp.csr_matrix(out)
        return CountArray.of(out)

    @torch.no_grad()
    def get_likelihood_parameters(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        give_mean: bool = False,
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """The likelihood's parameters per cell (the classic ``generate_parameters``).

        Returns:
            ``{"mean": ..., "dispersions": ..., "dropout": ...}`` (dispersions θ for NB /
            ZINB, dropout probabilities for ZINB; ``{"mean", "std"}`` for the ``"normal"``
            likelihood), each ``[n_cells, n_genes]`` (``n_samples=1`` or ``give_mean``) or
            ``[n_samples, n_cells, n_genes]``.
        """
        n_samples = check_positive_int("n_samples", n_samples)
        parts: dict[str, list[Tensor]] = {"mean": [], "dispersions": [], "dropout": [], "std": []}
        for cells in self._minibatches(adata, indices, batch_size, dataloader):
            px, _ = self._decode(cells, n_samples)
            values = {"mean": px.mu}
            if isinstance(px, NegativeBinomial):
                values["dispersions"] = px.theta
            if isinstance(px, ZeroInflatedNegativeBinomial):
                values["dropout"] = px.zi_probs
            if isinstance(px, NormalLikelihood):
                values["std"] = px.std
            for key, value in values.items():
                value = value.expand(px.mu.shape)
                parts[key].append(value.mean(0) if give_mean or n_samples == 1 else value)
        out = {}
        for key, chunks in parts.items():
            if chunks:
                dim = 0 if give_mean or n_samples == 1 else 1
                out[key] = torch.cat(chunks, dim=dim).cpu().numpy()
        return out

    @torch.no_grad()
    def get_feature_correlation_matrix(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 10,
        batch_size: int = 64,
        rna_size_factor: int = 1000,
        transform_batch: Any = None,
        correlation_type: str = "spearman",
        silent: bool = True,
    ) -> pd.DataFrame:
        """Gene-gene correlation of denoised samples (Pearson or Spearman).

        Denoised samples are Gamma draws ``Gamma(θ, θ / (ρ · rna_size_factor))`` — the
        NB's rate before Poisson noise, at a common library size — for ``n_samples``
        latents per cell; correlations are computed over cells × samples and averaged over
        the ``transform_batch`` batches.

        ``silent`` (scvi-tools' switch of a progress bar) changes nothing here.

        Returns:
            A ``[n_genes, n_genes]`` DataFrame indexed by gene names.
        """
        del silent
        n_samples = check_positive_int("n_samples", n_samples)
        if correlation_type not in ("pearson", "spearman"):
            raise ValueError(
                f"`correlation_type` must be 'pearson' or 'spearman', got {correlation_type!r}."
            )
        codes = self._batch_codes(transform_batch)
        matrices = []
        for code in codes:
            samples = []
            for cells in self._minibatches(adata, indices, batch_size):
                px, _ = self._decode(cells, n_samples, code)
                rate = px.scale * float(rna_size_factor)
                if isinstance(px, NegativeBinomial):
                    theta = px.theta
                    rate = gamma_sample(theta, theta / rate.clamp(min=1e-8))
                samples.append(rate.reshape(-1, rate.shape[-1]))
            data = torch.cat(samples).cpu().numpy().astype(np.float64)
            if correlation_type == "spearman":
                data = rankdata(data, axis=0)
            matrices.append(np.corrcoef(data, rowvar=False))
        names = list(self.setup.var_names)
        return pd.DataFrame(np.mean(matrices, axis=0), index=names, columns=names)
