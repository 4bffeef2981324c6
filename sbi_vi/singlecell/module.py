r"""The scVI module: a plain ``nn.Module`` on tensors (no AnnData).

Generative model of the counts of cell n (batch s_n):

.. math::

    z_n \sim \mathcal N(0, I), \quad \log \ell_n \sim \mathcal N(\mu_{s_n}, \sigma^2_{s_n})
    \text{ (or observed)}, \quad \rho_n = \mathrm{softmax}(f(z_n, s_n)), \quad
    x_{ng} \sim \mathrm{NB}/\mathrm{ZINB}/\mathrm{Poisson}(\ell_n \rho_{ng}, \theta_g, \ldots)

The encoder is an engine family (:mod:`sbi_vi.vi.families`) over ``u = [z, log ℓ]`` (just
``z`` with the observed library size), conditioned on the cell: its context is
``log(1 + x)`` (plus covariates with ``encode_covariates``) and its embedding net the
fully connected encoder body, so a diagonal Gaussian, a full Gaussian or any zuko flow serves
as q(z | x). The loss is the engine's divergence on ``[particles, cells]`` log densities:
``log p̃ = log p(x | z, ℓ) + w (log p(z) + log p(ℓ))`` and ``log q = w log q(z, ℓ | x)``,
with ``w`` the KL warm-up weight (1: the ELBO for rKL, the IWAE bound for IW).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_vi._checks import check_choice, check_positive_int
from sbi_vi.singlecell.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from sbi_vi.singlecell.loader import CellBatch
from sbi_vi.singlecell.nn import (
    CovariateBody,
    EmbeddingModuleMixin,
    FCLayers,
    StackedHeads,
    batch_embedding,
    decoder_options,
    encoder_family,
    encoder_options,
)
from sbi_vi.singlecell.normal import NormalLikelihood
from sbi_vi.vi.divergences import Divergence, ImportanceWeighted
from sbi_vi.vi.divergences.base import detached_log_prob
from sbi_vi.vi.families import rsample_and_log_prob

__all__ = ["VAE", "LossOutput"]

GeneLikelihood = Literal["zinb", "nb", "poisson", "normal"]
Dispersion = Literal["gene", "gene-batch", "gene-label", "gene-cell"]
LatentDistribution = Literal["normal", "ln"]
BatchRepresentation = Literal["one-hot", "embedding"]
Placement = Literal["encoder", "decoder", "both", "none"]
BATCH_KEY = "batch"
"""The key of the batch embedding (scvi-tools' ``REGISTRY_KEYS.BATCH_KEY``)."""
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class LossOutput:
    """One evaluation of the module's objective on a minibatch of ``B`` cells.

    Attributes:
        loss: Scalar surrogate (the divergence's; mean over cells) to backpropagate.
        elbo: Per-cell ELBO at full KL weight, ``[B]`` (detached; higher is better).
        reconstruction_loss: Per-cell ``−log p(x | z, ℓ)``, mean over particles, ``[B]``.
        kl_local: Per-cell Monte-Carlo ``KL(q(z, ℓ | x) ‖ p(z, ℓ))``, ``[B]``.
        log_w: Log importance weights ``log p(x, z, ℓ) − log q(z, ℓ | x)``, ``[P, B]``.
    """

    loss: Tensor
    elbo: Tensor
    reconstruction_loss: Tensor
    kl_local: Tensor
    log_w: Tensor


class VAE(EmbeddingModuleMixin, nn.Module):
    """scVI's variational auto-encoder with an engine family as encoder.

    The arguments and defaults are scvi-tools' ``VAE`` (which ``SCVI(**kwargs)`` forwards),
    plus the encoder family ``q``.

    Args:
        n_input: Number of genes ``G``.
        n_batch: Number of batches (injected into the decoder).
        n_labels: Number of labels (for ``dispersion="gene-label"``).
        n_hidden: Hidden width of encoder and decoder.
        n_latent: Dimension of z.
        n_layers: Hidden layers of encoder and decoder.
        n_continuous_cov: Continuous covariates (concatenated to the decoder's input, and to
            the encoder's with ``encode_covariates``).
        n_cats_per_cov: Categories of each extra categorical covariate.
        dropout_rate: Dropout of the encoder.
        dispersion: ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``.
        gene_likelihood: ``"zinb"``, ``"nb"``, ``"poisson"``, or ``"normal"`` (a Gaussian
            of mean ``ℓ ρ`` and sd ``exp(px_r)``, for log-normalised data).
        latent_distribution: ``"normal"``, or ``"ln"`` (z = softmax of a Gaussian).
        use_observed_lib_size: Use ``log Σ_g x_g`` as ``log ℓ``; otherwise ``log ℓ`` is
            latent with a per-batch log-normal prior.
        use_size_factor_key: ``log ℓ`` is the log of the cell's size factor, and the
            normalised expression is ``softplus`` of the decoder's output (not a softmax:
            it then scales a size factor, not a total count), as scvi-tools. Takes priority
            over ``use_observed_lib_size``.
        library_log_means: Per-batch prior mean of ``log ℓ``, ``[n_batch]``.
        library_log_vars: Per-batch prior variance of ``log ℓ``, ``[n_batch]``.
        encode_covariates: Give the encoder the batch and covariates too (categorical ones
            enter every hidden layer with ``deeply_inject_covariates``, continuous ones the
            first).
        deeply_inject_covariates: Categorical covariates enter every hidden layer, not just
            the first.
        batch_representation: ``"one-hot"`` (injected like a covariate) or ``"embedding"``
            (a learnt vector per batch concatenated to the decoder's input, and to the
            encoder's with ``encode_covariates``).
        batch_embedding_kwargs: Options of that ``nn.Embedding``: ``embedding_dim``
            (default 5), ``max_norm``, ``norm_type``, ``scale_grad_by_freq``.
        use_batch_norm: Where to use batch norm: ``"encoder"``, ``"decoder"``, ``"both"``,
            ``"none"``.
        use_layer_norm: Where to use layer norm (same choices; after the batch norm where
            both are used).
        log_variational: Encode ``log(1 + x)`` rather than ``x``.
        var_activation: Positive map making the encoder's variance from its raw output,
            ``var = var_activation(v) + var_eps`` (scVI's head; e.g. ``torch.exp``,
            ``torch.nn.functional.softplus``). ``None``: the engine's diagonal Gaussian,
            whose raw output is ``log sd`` (scVI's ``torch.exp`` up to a factor 2 and the
            ``1e-4`` floor).
        extra_encoder_kwargs: Encoder options: ``activation_fn`` (an ``nn.Module`` class),
            ``bias``, ``use_activation``, ``var_eps`` (variance floor, default ``1e-4``).
        extra_decoder_kwargs: Decoder options: ``activation_fn``, ``bias``,
            ``use_activation``.
        extra_payload_autotune: Only ``False``: scvi-tools' autotune payload is not offered.
        q: The encoder's engine family: ``"gaussian_diag"`` (scVI's), ``"gaussian"`` or a
            zuko flow name (``"maf"``, ``"nsf"``, ...).
        q_kwargs: Options of a flow family (``num_transforms``, ``hidden_features``).

    Raises:
        ValueError: An option outside its choices, a latent library without priors, a
            variance head on a family other than ``"gaussian_diag"``,
            ``extra_payload_autotune=True``.
        TypeError: Unknown keys of ``extra_encoder_kwargs``, ``extra_decoder_kwargs``,
            ``batch_embedding_kwargs`` or ``q_kwargs``.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_labels: int = 1,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] | None = (),
        dropout_rate: float = 0.1,
        dispersion: Dispersion = "gene",
        gene_likelihood: GeneLikelihood = "zinb",
        latent_distribution: LatentDistribution = "normal",
        *,
        use_observed_lib_size: bool = True,
        use_size_factor_key: bool = False,
        library_log_means: Tensor | None = None,
        library_log_vars: Tensor | None = None,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        batch_representation: BatchRepresentation = "one-hot",
        batch_embedding_kwargs: dict[str, Any] | None = None,
        use_batch_norm: Placement = "both",
        use_layer_norm: Placement = "none",
        log_variational: bool = True,
        var_activation: Callable[[Tensor], Tensor] | None = None,
        extra_encoder_kwargs: dict[str, Any] | None = None,
        extra_decoder_kwargs: dict[str, Any] | None = None,
        extra_payload_autotune: bool = False,
        q: str = "gaussian_diag",
        q_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.n_input = check_positive_int("n_input", n_input)
        self.n_batch = check_positive_int("n_batch", n_batch)
        self.n_labels = check_positive_int("n_labels", n_labels)
        self.n_latent = check_positive_int("n_latent", n_latent)
        n_hidden = check_positive_int("n_hidden", n_hidden)
        n_layers = check_positive_int("n_layers", n_layers)
        self.dispersion = check_choice(
            "dispersion", dispersion, ("gene", "gene-batch", "gene-label", "gene-cell")
        )
        self.gene_likelihood = check_choice(
            "gene_likelihood", gene_likelihood, ("zinb", "nb", "poisson", "normal")
        )
        self.latent_distribution = check_choice(
            "latent_distribution", latent_distribution, ("normal", "ln")
        )
        self.batch_representation = check_choice(
            "batch_representation", batch_representation, ("one-hot", "embedding")
        )
        norms = ("encoder", "decoder", "both", "none")
        check_choice("use_batch_norm", use_batch_norm, norms)
        check_choice("use_layer_norm", use_layer_norm, norms)
        if not 0.0 <= float(dropout_rate) < 1.0:
            raise ValueError(f"`dropout_rate` must lie in [0, 1), got {dropout_rate}.")
        if extra_payload_autotune:
            raise ValueError(
                "`extra_payload_autotune=True` is not offered: it feeds scvi-tools' autotune "
                "(ray tune), which sbi_vi does not have; leave it False."
            )
        encoder_fc, variance = encoder_options(extra_encoder_kwargs)
        decoder_fc = decoder_options(extra_decoder_kwargs)
        self.use_size_factor_key = bool(use_size_factor_key)
        self.use_observed_lib_size = self.use_size_factor_key or bool(use_observed_lib_size)
        self.encode_covariates = bool(encode_covariates)
        self.log_variational = bool(log_variational)
        self.n_cats_per_cov = tuple(int(n) for n in (n_cats_per_cov or ()))
        self.n_continuous_cov = int(n_continuous_cov)
        if not self.use_observed_lib_size:
            self._register_library_priors(library_log_means, library_log_vars)

        self._embeddings_dict = nn.ModuleDict()
        self._one_hot_batch = self.batch_representation == "one-hot"
        n_batch_features = 0
        if not self._one_hot_batch:
            embedding = batch_embedding(self.n_batch, batch_embedding_kwargs)
            self.add_embedding(BATCH_KEY, embedding)
            n_batch_features = embedding.embedding_dim
        elif batch_embedding_kwargs:
            raise ValueError(
                "`batch_embedding_kwargs` applies to `batch_representation='embedding'`; got "
                f"{batch_representation!r}."
            )
        # the categorical codes injected into the layers: the batch (one-hot) and covariates
        self._cats = ((self.n_batch,) if self._one_hot_batch else ()) + self.n_cats_per_cov
        n_features = self.n_continuous_cov + n_batch_features  # concatenated to the input

        # Encoder: the engine family over u = [z, log ℓ], its body as embedding net.
        layer_options = {
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "use_batch_norm": use_batch_norm in ("encoder", "both"),
            "use_layer_norm": use_layer_norm in ("encoder", "both"),
            "inject_covariates": deeply_inject_covariates,
            **encoder_fc,
        }
        if self.encode_covariates:
            body: nn.Module = CovariateBody(
                self.n_input + n_features, n_hidden, self._cats, **layer_options
            )
        else:
            body = FCLayers(self.n_input, n_hidden, **layer_options)
        self.latent_size = self.n_latent + (0 if self.use_observed_lib_size else 1)
        self.encoder = encoder_family(
            q, q_kwargs, self.latent_size, n_hidden, body, self._library_shift(),
            var_activation, variance,
        )  # fmt: skip

        # Decoder: z (and covariates) -> normalised expression, dispersion, dropout.
        self.decoder = FCLayers(
            self.n_latent + n_features,
            n_hidden,
            n_cats=self._cats,
            n_layers=n_layers,
            dropout_rate=0.0,
            use_batch_norm=use_batch_norm in ("decoder", "both"),
            use_layer_norm=use_layer_norm in ("decoder", "both"),
            inject_covariates=deeply_inject_covariates,
            **decoder_fc,
        )
        self.px_scale_decoder = nn.Linear(n_hidden, self.n_input)
        self.px_dropout_decoder = (
            nn.Linear(n_hidden, self.n_input) if self.gene_likelihood == "zinb" else None
        )
        if self.dispersion == "gene-cell":
            self.px_r_decoder = nn.Linear(n_hidden, self.n_input)
        else:
            columns = {"gene": 1, "gene-batch": self.n_batch, "gene-label": self.n_labels}
            self.px_r = nn.Parameter(torch.randn(self.n_input, columns[self.dispersion]))

    def _register_library_priors(self, means: Tensor | None, variances: Tensor | None) -> None:
        if means is None or variances is None:
            raise ValueError(
                "A latent library size (`use_observed_lib_size=False`) needs "
                "`library_log_means` and `library_log_vars` (per batch)."
            )
        for name, value in (("means", means), ("vars", variances)):
            if torch.as_tensor(value).shape != (self.n_batch,):
                raise ValueError(
                    f"`library_log_{name}` must have shape [{self.n_batch}] (one per "
                    f"batch), got {tuple(torch.as_tensor(value).shape)}."
                )
        self.register_buffer("library_log_means", torch.as_tensor(means).float())
        self.register_buffer("library_log_vars", torch.as_tensor(variances).float())

    def _library_shift(self) -> Tensor:
        shift = torch.zeros(self.latent_size)
        if not self.use_observed_lib_size:
            shift[-1] = float(self.library_log_means.mean())
        return shift

    # -- inference ---------------------------------------------------------------------

    def encoder_context(self, batch: CellBatch) -> Tensor:
        """The encoder's context for the cells of ``batch``, ``[B, n_context]``.

        ``log(1 + x)`` (or ``x``); with ``encode_covariates`` then the continuous
        covariates, the batch embedding, and the categorical codes as the last columns
        (read by :class:`~sbi_vi.singlecell.nn.CovariateBody`).
        """
        h = torch.log1p(batch.x) if self.log_variational else batch.x
        if not self.encode_covariates:
            return h
        parts = [h]
        if self.n_continuous_cov:
            parts.append(batch.cont_covs.to(h.dtype))
        if not self._one_hot_batch:
            parts.append(self.compute_embedding(BATCH_KEY, batch.batch_index).to(h.dtype))
        codes = self._codes(batch.batch_index, batch)
        if codes:
            parts.append(torch.stack(codes, -1).to(h.dtype))
        return torch.cat(parts, -1)

    def _codes(self, batch_index: Tensor, batch: CellBatch) -> list[Tensor]:
        """The codes injected into the layers, in the order of ``self._cats``."""
        codes = [batch_index] if self._one_hot_batch else []
        if self.n_cats_per_cov:
            codes.extend(batch.cat_covs.unbind(-1))
        return codes

    def q(self, batch: CellBatch) -> Distribution:
        """q(u | x) with batch shape ``[B]`` and event shape ``[latent_size]``."""
        return self.encoder(self.encoder_context(batch))

    def split(self, u: Tensor, batch: CellBatch) -> tuple[Tensor, Tensor]:
        """``(z, log ℓ)`` of latent draws ``u`` ``[*S, B, latent_size]``.

        ``z`` is ``[*S, B, n_latent]`` (softmax-ed for ``"ln"``); ``log ℓ`` is
        ``[*S, B]`` (latent) or ``[B]`` (observed, broadcast).
        """
        z = u[..., : self.n_latent]
        if self.latent_distribution == "ln":
            z = torch.softmax(z, -1)
        if self.use_observed_lib_size:
            return z, self.observed_log_library(batch)
        return z, u[..., self.n_latent]

    def observed_log_library(self, batch: CellBatch) -> Tensor:
        """``log Σ_g x_g``, or ``log`` of the size factor with ``use_size_factor_key``, ``[B]``.

        Raises:
            ValueError: With ``use_size_factor_key`` and a minibatch without size factors.
        """
        if self.use_size_factor_key:
            if batch.size_factor is None:
                raise ValueError(
                    "`use_size_factor_key=True` needs the cells' size factors; set them up "
                    "with `setup_anndata(adata, size_factor_key=...)`."
                )
            return batch.size_factor.to(batch.x.dtype).log()
        return batch.x.sum(-1).clamp(min=1.0).log()

    # -- generative --------------------------------------------------------------------

    def generative(
        self,
        z: Tensor,
        log_library: Tensor,
        batch: CellBatch,
        *,
        transform_batch: Tensor | None = None,
        heads: StackedHeads | None = None,
    ) -> Distribution:
        """p(x | z, ℓ) with parameters ``[*S, B, G]`` for ``z`` ``[*S, B, n_latent]``.

        Args:
            z: Latent cell states.
            log_library: ``log ℓ``, broadcastable to ``[*S, B]``.
            batch: The cells (their batch codes and covariates).
            transform_batch: Decode as if every cell were in this batch (codes ``[B]``).
            heads: :meth:`stacked_heads` of this module, for inference (no gradient): the
                output layers as one matrix product.
        """
        lead = z.shape[:-1]
        batch_index = batch.batch_index if transform_batch is None else transform_batch
        flat = z.reshape(-1, z.shape[-1])
        reps = flat.shape[0] // batch_index.shape[0]
        inputs = [flat]
        if self.n_continuous_cov:
            inputs.append(batch.cont_covs.to(flat.dtype).repeat(reps, 1))
        if not self._one_hot_batch:
            embedded = self.compute_embedding(BATCH_KEY, batch_index).to(flat.dtype)
            inputs.append(embedded.repeat(reps, 1))
        codes = [c.repeat(reps) for c in self._codes(batch_index, batch)]
        h = self.decoder(torch.cat(inputs, -1) if len(inputs) > 1 else flat, codes)
        outputs = iter(heads(h) if heads is not None else [f(h) for f in self.head_layers()])
        logits = next(outputs).reshape(*lead, self.n_input)
        raw_theta = next(outputs) if self.dispersion == "gene-cell" else None
        if self.gene_likelihood == "poisson":
            px_scale, mu = self._scale_and_mean(logits, log_library)
            return Poisson(mu, scale=px_scale)
        if raw_theta is not None:
            theta = torch.exp(raw_theta).reshape(*lead, self.n_input)
        elif self.dispersion == "gene":
            theta = torch.exp(self.px_r[:, 0])
        else:
            index = batch_index if self.dispersion == "gene-batch" else batch.labels
            theta = torch.exp(self.px_r.T[index])  # [B, G]
        if self.gene_likelihood == "normal":
            px_scale, mu = self._scale_and_mean(logits, log_library)
            return NormalLikelihood(mu, theta, px_scale)
        zi_logits = None
        if self.px_dropout_decoder is not None:
            zi_logits = next(outputs).reshape(*lead, self.n_input)
        if self.use_size_factor_key:  # softplus scale: μ formed explicitly
            px_scale, mu = self._scale_and_mean(logits, log_library)
            if zi_logits is None:
                return NegativeBinomial(mu, theta, px_scale)
            return ZeroInflatedNegativeBinomial(mu, theta, zi_logits, px_scale)
        if zi_logits is None:
            return NegativeBinomial(None, theta, logits=logits, log_library=log_library)
        return ZeroInflatedNegativeBinomial(
            None, theta, zi_logits, logits=logits, log_library=log_library
        )

    def head_layers(self) -> list[nn.Linear]:
        """The decoder's output layers: ``px_scale_decoder``, then ``px_r_decoder``
        (``dispersion="gene-cell"``) and ``px_dropout_decoder`` (ZINB) where they exist."""
        layers = (
            self.px_scale_decoder,
            getattr(self, "px_r_decoder", None),
            self.px_dropout_decoder,
        )
        return [layer for layer in layers if layer is not None]

    def stacked_heads(self) -> StackedHeads:
        """The output layers as one matrix product (:class:`~sbi_vi.singlecell.nn.StackedHeads`)
        for :meth:`generative` without gradients; make a new one after the weights change."""
        return StackedHeads(self.head_layers())

    def _scale_and_mean(self, logits: Tensor, log_library: Tensor) -> tuple[Tensor, Tensor]:
        """``(ρ, ℓ ρ)``: ρ the softmax of the logits, or their softplus with size factors."""
        px_scale = F.softplus(logits) if self.use_size_factor_key else torch.softmax(logits, -1)
        return px_scale, torch.exp(log_library).unsqueeze(-1) * px_scale

    def log_prior(self, u: Tensor, batch: CellBatch) -> Tensor:
        """log p(z) (+ log p(log ℓ | batch)) of draws ``u`` ``[*S, B, latent_size]``."""
        z = u[..., : self.n_latent]
        log_p = -0.5 * z.square().sum(-1) - self.n_latent * _HALF_LOG_2PI
        if not self.use_observed_lib_size:
            mean = self.library_log_means[batch.batch_index]
            var = self.library_log_vars[batch.batch_index]
            diff = u[..., self.n_latent] - mean
            log_p = log_p - 0.5 * diff.square() / var - 0.5 * var.log() - _HALF_LOG_2PI
        return log_p

    # -- objective ---------------------------------------------------------------------

    def log_densities(
        self,
        batch: CellBatch,
        n_particles: int,
        *,
        path_derivative: bool = False,
        q: Distribution | None = None,
        gamma_terms: Tensor | None = None,
        heads: StackedHeads | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Distribution]:
        """Draw ``n_particles`` latents per cell and evaluate every log density.

        Args:
            batch: The cells.
            n_particles: Draws per cell.
            path_derivative: Also return ``log q`` with detached encoder parameters.
            q: The encoder's ``q(u | x)`` of these cells, if already computed.
            gamma_terms: The likelihood's μ-free terms of these cells (see the
                distributions' ``gamma_terms``), if already computed and shared by the draws.
            heads: :meth:`stacked_heads`, for inference (see :meth:`generative`).

        Returns:
            ``(log_px, log_prior, log_q, log_q_grad, px)``: ``log p(x | z, ℓ)``,
            ``log p(z, ℓ)`` and ``log q(z, ℓ | x)``, each ``[P, B]``; ``log q`` with the
            encoder's parameters detached when ``path_derivative`` (else ``None``); and
            the likelihood ``px``.
        """
        context = self.encoder_context(batch) if q is None or path_derivative else None
        u, log_q = rsample_and_log_prob(self.encoder(context) if q is None else q, (n_particles,))
        # the context is detached too: with a batch embedding it carries parameters of q
        log_q_grad = (
            detached_log_prob(self.encoder, u, context.detach()) if path_derivative else None
        )
        z, log_library = self.split(u, batch)
        px = self.generative(z, log_library, batch, heads=heads)
        log_px = px.log_prob_sum(batch.x, gamma_terms=gamma_terms)
        return log_px, self.log_prior(u, batch), log_q, log_q_grad, px

    def loss(
        self,
        batch: CellBatch,
        divergence: Divergence,
        *,
        kl_weight: float = 1.0,
        n_particles: int = 1,
    ) -> LossOutput:
        """The divergence's surrogate loss on the cells of ``batch``.

        Args:
            batch: A minibatch of ``B`` cells.
            divergence: An engine divergence with ``from_log_densities`` (rKL, IW, alpha).
            kl_weight: Warm-up weight ``w`` of the prior and entropy terms.
            n_particles: Latent draws per cell (times ``K`` for IW).
        """
        n = n_particles * (divergence.K if isinstance(divergence, ImportanceWeighted) else 1)
        path = bool(getattr(divergence, "stick_the_landing", False)) or bool(
            getattr(divergence, "dreg", False)
        )
        log_px, log_prior, log_q, log_q_grad, _ = self.log_densities(
            batch, n, path_derivative=path
        )
        if kl_weight == 1.0:
            out = divergence.from_log_densities(log_px + log_prior, log_q, log_q_grad=log_q_grad)
        else:
            w = float(kl_weight)
            out = divergence.from_log_densities(
                log_px + w * log_prior,
                w * log_q,
                log_q_grad=None if log_q_grad is None else w * log_q_grad,
            )
        with torch.no_grad():
            kl = (log_q - log_prior).mean(0)
            recon = -log_px.mean(0)
            log_w = log_px + log_prior - log_q
        return LossOutput(out.loss, -(recon + kl), recon, kl, log_w)
