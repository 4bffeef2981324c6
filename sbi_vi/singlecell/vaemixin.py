"""scvi-tools' ``VAEMixin``: ELBO, marginal log-likelihood, reconstruction error, latent.

Every quantity comes from the module's one set of log densities
(:meth:`~sbi_vi.singlecell.module.VAE.log_densities`, ``[particles, cells]``): the ELBO and
the reconstruction error average them over one draw per cell, the marginal log-likelihood is
the engine's importance-sampling estimate (:func:`~sbi_vi.diagnostics.log_mean_weight`)
with the encoder as proposal, and the per-cell PSIS k̂ is the engine's
:func:`~sbi_vi.diagnostics.psis` of those same weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_vi._checks import check_positive_float, check_positive_int, seeded
from sbi_vi.diagnostics import log_mean_weight, psis
from sbi_vi.singlecell.base import BaseSingleCellModel
from sbi_vi.singlecell.loader import CellBatch
from sbi_vi.vi.families import DiagonalGaussian, Gaussian
from sbi_vi.vi.validation import common_random_numbers

__all__ = ["VAEMixin"]

_PARTICLE_CHUNK_ELEMENTS = 2**20  # decoder outputs per pass: particles × cells × genes
# (~4 MB per float32 tensor: the pass's tensors stay in cache; 2**23 was ~2x slower)
_KERNEL_CHUNK_ELEMENTS = 2**21  # the same with the compiled ZINB kernel (zinb_kernel), which
# reads each row once while it is in cache: larger passes then cost less per draw (2**21 took
# 15 % less CPU than 2**20 and 2**22 on the 2,500-gene data set)


def _particle_chunks(n_samples: int, n_cells: int, n_genes: int, elements: int) -> list[int]:
    per_pass = max(1, elements // max(1, n_cells * n_genes))
    sizes = [per_pass] * (n_samples // per_pass)
    if n_samples % per_pass:
        sizes.append(n_samples % per_pass)
    return sizes


class VAEMixin(BaseSingleCellModel):
    """ELBO, marginal LL, reconstruction error, latent representation, per-cell k̂."""

    @torch.no_grad()
    def _log_weights(self, cells: CellBatch, n_samples: int) -> Tensor:
        """``log p(x, z, ℓ) − log q(z, ℓ | x)`` of ``n_samples`` draws, ``[S, B]``."""
        module = self.module
        module.eval()
        q = module.q(cells)  # the encoder once; the draws come in chunks
        heads = module.stacked_heads()  # the decoder's output layers as one product
        gamma = None
        parts = []
        fused = module.gene_likelihood == "zinb" and cells.x.device.type == "cpu"
        elements = _KERNEL_CHUNK_ELEMENTS if fused else _PARTICLE_CHUNK_ELEMENTS
        for size in _particle_chunks(n_samples, cells.x.shape[0], self.setup.n_vars, elements):
            log_px, log_prior, log_q, _, px = module.log_densities(
                cells, size, q=q, gamma_terms=gamma, heads=heads
            )
            parts.append(log_px + log_prior - log_q)
            theta = getattr(px, "_theta", None)
            if gamma is None and (theta is None or theta.dim() < len(px.batch_shape)):
                gamma = px.gamma_terms(cells.x)  # free of z: shared by every later chunk
        return torch.cat(parts)

    def _reduce(self, values: list[Tensor], return_mean: bool) -> Tensor:
        """scvi-tools' return: a 0-d tensor (the mean over cells) or one value per cell."""
        out = torch.cat(values).cpu()
        return out.mean() if return_mean else out

    @torch.no_grad()
    def get_elbo(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
        return_mean: bool = True,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """The evidence lower bound (higher is better): one draw of q per cell.

        Args:
            seed: Seed of the draws (``None``: torch's global generator).
            **kwargs: ``n_particles`` (draws per cell, default 1).

        Returns:
            As scvi-tools: the mean ELBO over the cells as a 0-d tensor, or a tensor
            ``[n_cells]`` (``return_mean=False``).
        """
        n_particles = check_positive_int("n_particles", kwargs.pop("n_particles", 1))
        _no_kwargs(kwargs)
        self.module.eval()
        heads = self.module.stacked_heads()
        values = []
        with seeded(seed):
            for cells in self._minibatches(adata, indices, batch_size, dataloader):
                log_px, log_prior, log_q, _, _ = self.module.log_densities(
                    cells, n_particles, heads=heads
                )
                values.append((log_px + log_prior - log_q).mean(0))
        return self._reduce(values, return_mean)

    @torch.no_grad()
    def get_reconstruction_error(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
        return_mean: bool = True,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Tensor]:
        """The reconstruction loss ``−log p(x | z, ℓ)`` at one draw of q per cell.

        As scvi-tools returns it: a positive loss (lower is better), although its reference
        page's note reads "higher is better".

        Args:
            seed: Seed of the draws (``None``: torch's global generator).

        Returns:
            ``{"reconstruction_loss": value}``: the mean over cells (a 0-d tensor), or a
            tensor ``[n_cells]``.
        """
        _no_kwargs(kwargs)
        self.module.eval()
        heads = self.module.stacked_heads()
        values = []
        with seeded(seed):
            for cells in self._minibatches(adata, indices, batch_size, dataloader):
                log_px, _, _, _, _ = self.module.log_densities(cells, 1, heads=heads)
                values.append(-log_px.mean(0))
        return {"reconstruction_loss": self._reduce(values, return_mean)}

    @torch.no_grad()
    def get_marginal_ll(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
        dataloader: Iterable[Any] | None = None,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> np.float64 | Tensor:
        """Importance-sampling estimate of ``log p(x)`` with the encoder as proposal.

        ``log (1/S) Σ_s p(x, z_s, ℓ_s) / q(z_s, ℓ_s | x)`` per cell, ``S = n_mc_samples``
        (a lower bound in expectation; higher is better).

        Args:
            seed: Seed of the draws (``None``: torch's global generator).

        Returns:
            As scvi-tools: the mean over cells as a numpy float64 (``return_mean=True``),
            else a tensor ``[n_cells]``.
        """
        n_mc_samples = check_positive_int("n_mc_samples", n_mc_samples)
        _no_kwargs(kwargs)
        values = []
        with seeded(seed):
            for cells in self._minibatches(adata, indices, batch_size, dataloader):
                values.append(log_mean_weight(self._log_weights(cells, n_mc_samples)))
        out = torch.cat(values).cpu()  # one device-to-host copy, not one per minibatch
        return np.float64(out.double().mean()) if return_mean else out

    @torch.no_grad()
    def get_aggregated_posterior(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dof: float | None = 3.0,
        dataloader: Iterable[Any] | None = None,
    ) -> torch.distributions.MixtureSameFamily:
        """The aggregated posterior ``(1/N) Σ_n q(z | x_n)`` over the cells (scvi-tools').

        Each cell's component has its posterior mean and standard deviation of z
        (:meth:`get_latent_representation` with ``return_dist=True``): a Student-t with
        ``dof`` degrees of freedom (scvi-tools 1.5's default, 3: heavier tails than the
        encoder's Gaussian), or the Gaussian itself with ``dof=None``.

        Raises:
            ValueError: ``dof`` is not a positive number or ``None``.

        Returns:
            A mixture with ``N`` equally weighted diagonal components of event shape
            ``[n_latent]``.
        """
        if dof is not None:
            dof = check_positive_float("dof", dof)
        mean, var = self.get_latent_representation(
            adata, indices, batch_size=batch_size, return_dist=True, dataloader=dataloader
        )
        loc = torch.as_tensor(mean, device=self.device)
        scale = torch.as_tensor(var, device=self.device).sqrt()
        dist = torch.distributions
        components = dist.Normal(loc, scale) if dof is None else dist.StudentT(dof, loc, scale)
        return dist.MixtureSameFamily(
            dist.Categorical(logits=torch.zeros(loc.shape[0], device=self.device)),
            dist.Independent(components, 1),
        )

    @torch.no_grad()
    def get_psis_khat(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 500,
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
    ) -> np.ndarray:
        """PSIS k̂ of the encoder for each cell: how well q(z, ℓ | x) serves that cell.

        ``k̂ ≤ 0.7`` (or the sample-size threshold of
        :func:`~sbi_vi.diagnostics.khat_threshold`) means the amortised posterior is a good
        importance-sampling proposal for the cell's exact posterior; larger values flag
        cells whose latent representation should not be trusted as a posterior summary.

        Returns:
            k̂ per cell, ``[n_cells]``.
        """
        n_mc_samples = check_positive_int("n_mc_samples", n_mc_samples)
        if n_mc_samples < 2:
            raise ValueError(f"`n_mc_samples` must be at least 2, got {n_mc_samples}.")
        values = []
        for cells in self._minibatches(adata, indices, batch_size, dataloader):
            values.append(torch.as_tensor(psis(self._log_weights(cells, n_mc_samples)).khat))
        return torch.cat([v.reshape(-1) for v in values]).cpu().numpy()

    @torch.no_grad()
    def get_latent_representation(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader: Iterable[Any] | None = None,
        *,
        seed: int | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The latent cell states z.

        Args:
            give_mean: The posterior mean of z (closed form for a Gaussian encoder with
                ``latent_distribution="normal"``, else ``mc_samples`` draws); ``False``: one
                draw per cell.
            mc_samples: Draws for means without closed form.
            return_dist: Return the mean and variance of q(z | x) (of the Gaussian before
                the softmax for ``"ln"``).
            seed: Seed of the draws (``None``: torch's global generator).

        Returns:
            ``[n_cells, n_latent]``, or ``(means, variances)`` with ``return_dist``.
        """
        with seeded(seed):
            return self._latent(
                adata, indices, give_mean, mc_samples, batch_size, return_dist, dataloader
            )

    def _latent(
        self,
        adata: Any,
        indices: Any,
        give_mean: bool,
        mc_samples: int,
        batch_size: int | None,
        return_dist: bool,
        dataloader: Iterable[Any] | None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        mc_samples = check_positive_int("mc_samples", mc_samples)
        self.module.eval()
        module = self.module
        means, variances = [], []
        closed = isinstance(module.encoder, Gaussian | DiagonalGaussian)
        for cells in self._minibatches(adata, indices, batch_size, dataloader):
            q = module.q(cells)
            d = module.n_latent
            if return_dist or (give_mean and closed and module.latent_distribution == "normal"):
                if closed:
                    enc = module.encoder
                    base = q.base
                    loc = enc.shift + enc.scale * base.loc
                    var = (enc.scale.unsqueeze(-1) * base.scale_tril).square().sum(-1)
                    mean, variance = loc[..., :d], var[..., :d]
                else:
                    with common_random_numbers(0):
                        u = q.sample((min(mc_samples, 1000),))[..., :d]
                    mean, variance = u.mean(0), u.var(0)
                means.append(mean)
                variances.append(variance)
                continue
            if give_mean:
                z, _ = module.split(q.sample((mc_samples,)), cells)
                means.append(z.mean(0))
            else:
                z, _ = module.split(q.sample(), cells)
                means.append(z)
        mean = torch.cat(means).cpu().numpy()
        if return_dist:
            return mean, torch.cat(variances).cpu().numpy()
        return mean

    @torch.no_grad()
    def get_latent_library_size(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
        *,
        mc_samples: int = 1000,
        seed: int | None = None,
    ) -> np.ndarray:
        """The library size ℓ of each cell (scvi-tools' ``get_latent_library_size``).

        Args:
            give_mean: The posterior mean of ℓ (exact for a Gaussian encoder,
                else from ``mc_samples`` draws); ``False``: one draw of ℓ per cell — with the
                observed library size, that is ``Σ_g x_g`` (or the size factor).
            mc_samples: Draws for the mean without closed form.
            seed: Seed of the draws (``None``: torch's global generator).

        Returns:
            ``[n_cells, 1]`` (float32), as scvi-tools.

        Raises:
            RuntimeError: ``give_mean=True`` with the observed library size
                (``use_observed_lib_size=True``): the model has no posterior of ℓ; as
                scvi-tools, use ``give_mean=False``.
        """
        module = self.module
        if give_mean and module.use_observed_lib_size:
            raise RuntimeError(
                "The model does not infer the library size (`use_observed_lib_size=True`): it "
                "has no posterior of ℓ. Set `give_mean=False` to get the observed library size."
            )
        mc_samples = check_positive_int("mc_samples", mc_samples)
        module.eval()
        closed = isinstance(module.encoder, Gaussian | DiagonalGaussian)
        out = []
        with seeded(seed):
            for cells in self._minibatches(adata, indices, batch_size, dataloader):
                if not give_mean:
                    _, log_lib = module.split(module.q(cells).sample(), cells)
                    out.append(log_lib.exp())
                    continue
                q = module.q(cells)
                if closed:  # log ℓ ~ N(loc, var): E[ℓ] = exp(loc + var / 2)
                    enc, base = module.encoder, q.base
                    loc = (enc.shift + enc.scale * base.loc)[..., -1]
                    var = (enc.scale.unsqueeze(-1) * base.scale_tril).square().sum(-1)[..., -1]
                    out.append((loc + var / 2).exp())
                else:
                    _, log_lib = module.split(q.sample((mc_samples,)), cells)
                    out.append(log_lib.exp().mean(0))
        return torch.cat(out).reshape(-1, 1).float().cpu().numpy()


def _no_kwargs(kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"Unexpected keyword arguments: {sorted(kwargs)}.")
