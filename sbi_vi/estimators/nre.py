r"""Neural ratio estimation with the contrastive loss of NRE-C, which covers NRE-A and NRE-B.

Miller et al. (2022), *Contrastive Neural Ratio Estimation*, arXiv:2210.06170. Every x_i of a
batch is paired with its own θ_i and with ``K = num_classes`` contrasting θ drawn from the
rest of the batch. With logits :math:`f` of a classifier, :math:`\gamma = K p_K / p_0` and

.. math::

    \log p_\text{joint} &= \log\gamma + f(\theta_i, x_i) - \log\Big(K +
        \gamma \sum_{k=0}^{K-1} e^{f(\theta_{i,k}, x_i)}\Big), \qquad
        (\theta_{i,0} = \theta_i) \\
    \log p_\text{marginal} &= \log K - \log\Big(K +
        \gamma \sum_{k=1}^{K} e^{f(\theta_{i,k}, x_i)}\Big),

the loss is :math:`-\operatorname{mean}\big(\tfrac{1}{1+\gamma}\log p_\text{marginal} +
\tfrac{\gamma}{1+\gamma}\log p_\text{joint}\big)`; its optimum is the exact
:math:`\log p(x \mid \theta) / p(x)`. ``K = 1, γ = 1`` is binary classification (NRE-A);
``γ = ∞`` leaves the softmax over ``K`` candidates (NRE-B, log-ratio up to a function of x).
The two terms share one set of ``K`` contrasts (``sbi`` draws two), which leaves each term's
expectation unchanged and saves about half of the classifier's forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions.transforms import Transform

from sbi_vi._checks import check_positive_int
from sbi_vi.estimators.base import NeuralEstimator
from sbi_vi.estimators.classifiers import CLASSIFIER_NAMES, classifier_nn
from sbi_vi.estimators.training import MAX_EPOCHS, TrainConfig
from sbi_vi.potentials import ratio_estimator_based_potential

__all__ = ["NRE", "NRE_A", "NRE_B", "NRE_C", "ContrastiveLoss", "LogitRatio"]


class LogitRatio(nn.Module):
    """Gives a user classifier ``net(theta [B, D], x [B, L]) -> [B] or [B, 1]`` the
    ``log_ratio(theta [*, D], x [*, L]) -> [*]`` method of the potentials."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.net(theta, x).reshape(theta.shape[0])

    def log_ratio(self, theta: Tensor, x: Tensor) -> Tensor:
        batch = torch.broadcast_shapes(theta.shape[:-1], x.shape[:-1])
        theta = theta.expand(*batch, theta.shape[-1]).reshape(-1, theta.shape[-1])
        x = x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1])
        return self(theta, x).reshape(batch)


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0:
        raise ValueError(f"`gamma` must be a positive number or math.inf, got {gamma!r}.")
    return float(gamma)


def _pair_logits(net: nn.Module, theta: Tensor, x: Tensor, index: Tensor) -> Tensor:
    """Logits ``[*, B, C]`` of each x_i ``[*, B, L]`` with the θ of ``theta [*, B, D]`` at
    ``index [B, C]``.

    Networks with separate embeddings (``RatioClassifier``) embed every θ and x once.
    """
    lead = theta.shape[:-1]
    c = index.shape[-1]
    if hasattr(net, "logits_from_features"):
        t = net.embed_theta(theta.reshape(-1, theta.shape[-1])).reshape(*lead, -1)
        e = net.embed_x(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)
        t = t[..., index, :]
        e = e.unsqueeze(-2).expand(*e.shape[:-1], c, e.shape[-1])
        logits = net.logits_from_features(t.reshape(-1, t.shape[-1]), e.reshape(-1, e.shape[-1]))
    else:
        t = theta[..., index, :]
        e = x.unsqueeze(-2).expand(*x.shape[:-1], c, x.shape[-1])
        logits = net(t.reshape(-1, t.shape[-1]), e.reshape(-1, e.shape[-1]))
    return logits.reshape(*lead, c)


class ContrastiveLoss:
    r"""The NRE-C loss with ``num_classes`` K and weight ``gamma`` (see the module doc).

    Args:
        num_classes: Contrasting θ per x, ``K >= 1``; batches need more than K pairs.
        gamma: Odds of a dependent versus the independent pair; ``math.inf`` gives NRE-B.
    """

    def __init__(self, num_classes: int = 5, gamma: float = 1.0):
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.gamma = _check_gamma(gamma)

    def __call__(
        self,
        net: nn.Module,
        theta: Tensor,
        x: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean loss over blocks ``theta [*, B, D]``, ``x [*, B, L]`` (contrasts in-block)."""
        b, k = theta.shape[-2], self.num_classes
        if b <= k:
            raise ValueError(
                f"A batch of {b} pairs cannot hold {k} contrasting θ per x; use batches "
                f"larger than `num_classes={k}` (or fewer classes)."
            )
        # K distinct offsets: x_i meets θ_{(i + o) mod B}, never its own θ.
        offsets = torch.randperm(b - 1, generator=generator)[:k].to(theta.device) + 1
        rows = torch.arange(b, device=theta.device).unsqueeze(-1)
        index = torch.cat((rows, (rows + offsets) % b), dim=-1)  # [B, K + 1], own θ first
        logits = _pair_logits(net, theta, x, index)
        joint, marginal = logits[..., :k], logits[..., 1:]
        if math.isinf(self.gamma):
            return -(joint[..., 0] - torch.logsumexp(joint, -1)).mean()
        log_gamma, log_k = math.log(self.gamma), math.log(k)
        pad = torch.full_like(joint[..., :1], log_k)
        lp_joint = (
            log_gamma
            + joint[..., 0]
            - torch.logsumexp(torch.cat((log_gamma + joint, pad), -1), -1)
        )
        lp_marginal = log_k - torch.logsumexp(torch.cat((log_gamma + marginal, pad), -1), -1)
        p_joint = self.gamma / (1 + self.gamma)
        return -(p_joint * lp_joint + (1 - p_joint) * lp_marginal).mean()

    def validation(self, net: nn.Module, theta: Tensor, x: Tensor, batch_size: int) -> float:
        """The loss on blocks of ``batch_size`` validation pairs, with fixed contrasts."""
        n = theta.shape[0]
        b = min(batch_size, n)
        m = n // b
        generator = torch.Generator().manual_seed(0)  # same contrasts every epoch
        theta = theta[: m * b].reshape(m, b, -1)
        x = x[: m * b].reshape(m, b, -1)
        with torch.no_grad():
            return float(self(net, theta, x, generator=generator))


class NRE(NeuralEstimator):
    r"""Neural ratio estimation with the contrastive NRE-C loss (``sbi``'s ``NRE_C``).

    Args:
        prior: The prior over θ, event shape ``[D]`` (may instead go to ``build_posterior``).
        classifier: ``"resnet"`` (default, as ``sbi``), ``"mlp"`` or ``"linear"`` on
            z-scored ``[θ, embed(x)]``; or a builder ``(batch_theta [N, D], batch_x [N, L])
            -> module`` (e.g. :func:`~sbi_vi.estimators.classifier_nn`) whose module maps
            ``(theta [B, D], x [B, L])`` to logits ``[B]`` or ``[B, 1]``.
        device: Training device.
        show_progress_bars: Show a tqdm bar over epochs while training.
        num_classes: Default ``K`` of :meth:`train`.
        gamma: Default ``gamma`` of :meth:`train`.
        **net_kwargs: With a string ``classifier``: arguments of
            :func:`~sbi_vi.estimators.classifier_nn` (``hidden_features``,
            ``embedding_net_x``, ``z_score_x``, ...).

    Example:
        >>> prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> theta = prior.sample((300,))
        >>> x = theta + 0.1 * torch.randn_like(theta)
        >>> nre = NRE(prior, classifier="mlp", show_progress_bars=False)
        >>> r = nre.append_simulations(theta, x).train(max_num_epochs=2, seed=0)
        >>> r.log_ratio(theta[:3], x[:3]).shape
        torch.Size([3])
    """

    def __init__(
        self,
        prior: object | None = None,
        classifier: Literal["linear", "mlp", "resnet"] | Callable = "resnet",
        device: str = "cpu",
        show_progress_bars: bool = True,
        num_classes: int = 5,
        gamma: float = 1.0,
        **net_kwargs: Any,
    ):
        super().__init__(prior, device, show_progress_bars)
        self._loss = ContrastiveLoss(num_classes, gamma)
        if isinstance(classifier, str):
            if classifier not in CLASSIFIER_NAMES:
                raise ValueError(
                    f"`classifier` must be one of {', '.join(map(repr, CLASSIFIER_NAMES))} or "
                    f"a callable builder; got {classifier!r}."
                )
            self._builder: Any = classifier_nn(classifier, **net_kwargs)
        elif net_kwargs:
            raise TypeError(
                f"Keyword arguments {sorted(net_kwargs)} configure a named classifier; a "
                "callable one is configured by its builder."
            )
        elif callable(classifier):
            self._builder = classifier
        else:
            raise TypeError(
                "`classifier` must be 'linear', 'mlp', 'resnet' or a builder (batch_theta, "
                f"batch_x) -> module; got {type(classifier).__name__}."
            )

    def _build_net(self, theta: Tensor, x: Tensor) -> nn.Module:
        net = self._builder(theta, x)
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"The classifier builder must return an nn.Module; got {type(net).__name__}."
            )
        if not callable(getattr(net, "log_ratio", None)):
            net = LogitRatio(net)
        return net.to(self._device)

    def _potential(self, net: nn.Module, prior: object) -> tuple[object, Transform]:
        return ratio_estimator_based_potential(net, prior)

    def train(
        self,
        num_classes: int | None = None,
        gamma: float | None = None,
        training_batch_size: int = 200,
        learning_rate: float = 5e-4,
        validation_fraction: float = 0.1,
        stop_after_epochs: int = 20,
        max_num_epochs: int = MAX_EPOCHS,
        clip_max_norm: float | None = 5.0,
        resume_training: bool = False,
        discard_prior_samples: bool = False,
        retrain_from_scratch: bool = False,
        show_train_summary: bool = False,
        *,
        show_progress_bar: bool | None = None,
        seed: int | None = None,
    ) -> nn.Module:
        r"""Fit the classifier to the stored simulations; arguments of ``sbi``'s ``NRE_C``.

        Args:
            num_classes: Contrasting θ per x, ``K`` (default: the constructor's, 5).
            gamma: Odds of dependent versus independent pairs (default: the constructor's,
                1.0); ``math.inf`` gives NRE-B.
            training_batch_size: Pairs per gradient step (must exceed ``num_classes``).
            learning_rate: Adam's learning rate.
            validation_fraction: Fraction of the simulations held out for validation.
            stop_after_epochs: Stop after this many epochs without a better validation loss.
            max_num_epochs: At most this many epochs (counted across resumed calls).
            clip_max_norm: Clip the gradient norm to this value (``None``: no clipping).
            resume_training: Continue the last training: same split, optimizer, epoch count
                and best loss.
            discard_prior_samples: Leave out round-0 simulations once later rounds exist.
            retrain_from_scratch: Build a new network instead of continuing the last one.
            show_train_summary: Write epochs and best validation loss after training.
            show_progress_bar: Show the epoch bar (default: the constructor's setting).
            seed: Seed of the initialisation, the split, batches and contrasts (the global
                RNG is restored afterwards).

        Returns:
            The trained classifier, with ``log_ratio(theta, x)`` (weights of the best
            validation epoch, eval mode, ``requires_grad=False``).

        Raises:
            RuntimeError: Without simulations, or on ``resume_training`` before training.
            ValueError: On invalid settings, e.g. batches not larger than ``num_classes``.
        """
        loss = ContrastiveLoss(
            self._loss.num_classes if num_classes is None else num_classes,
            self._loss.gamma if gamma is None else gamma,
        )
        config = TrainConfig(
            training_batch_size,
            learning_rate,
            validation_fraction,
            stop_after_epochs,
            max_num_epochs,
            clip_max_norm,
            self._show_progress_bars if show_progress_bar is None else bool(show_progress_bar),
        )
        return self._train(
            loss,
            config,
            resume_training=resume_training,
            discard_prior_samples=discard_prior_samples,
            retrain_from_scratch=retrain_from_scratch,
            show_train_summary=show_train_summary,
            seed=seed,
        )


NRE_C = NRE


class NRE_A(NRE):
    """NRE-A (Hermans et al. 2020): binary classification, ``num_classes=1, gamma=1``."""

    def __init__(
        self,
        prior: object | None = None,
        classifier: Literal["linear", "mlp", "resnet"] | Callable = "resnet",
        device: str = "cpu",
        show_progress_bars: bool = True,
        **net_kwargs: Any,
    ):
        super().__init__(prior, classifier, device, show_progress_bars, 1, 1.0, **net_kwargs)


class NRE_B(NRE):
    """NRE-B (Durkan et al. 2020): softmax over ``num_atoms`` candidates (``gamma=inf``);
    the log-ratio is learned up to a function of x."""

    def __init__(
        self,
        prior: object | None = None,
        classifier: Literal["linear", "mlp", "resnet"] | Callable = "resnet",
        device: str = "cpu",
        show_progress_bars: bool = True,
        num_atoms: int = 10,
        **net_kwargs: Any,
    ):
        super().__init__(
            prior, classifier, device, show_progress_bars, num_atoms, math.inf, **net_kwargs
        )
