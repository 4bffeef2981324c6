r"""Neural likelihood estimation: a conditional flow q(x | θ) fitted by maximum likelihood.

Papamakarios et al. (2019), *Sequential Neural Likelihood*, arXiv:1805.07226. The loss is
the negative log-likelihood :math:`-\frac1B \sum_i \log q(x_i \mid \theta_i)`; the posterior
is :math:`p(\theta \mid x_o) \propto q(x_o \mid \theta)\, p(\theta)`, fitted by VI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions.transforms import Transform

from sbi_vi._zuko import zuko
from sbi_vi.estimators.base import NeuralEstimator
from sbi_vi.estimators.flows import FLOW_NAMES, ConditionalFlow, likelihood_nn
from sbi_vi.estimators.training import MAX_EPOCHS, TrainConfig
from sbi_vi.estimators.zscore import Standardize
from sbi_vi.potentials import likelihood_estimator_based_potential

__all__ = ["NLE", "NLELoss"]

_VALIDATION_CHUNK = 8192


def _negative_log_likelihood(net: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
    loss = getattr(net, "loss", None)
    if callable(loss):
        return loss(x, theta)
    return -net.log_prob(x, theta)


class NLELoss:
    """Mean negative log-likelihood ``-log q(x | θ)`` of a batch (see ``EstimatorLoss``)."""

    def __call__(self, net: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        return _negative_log_likelihood(net, theta, x).mean()

    def validation(self, net: nn.Module, theta: Tensor, x: Tensor, batch_size: int) -> float:
        total = torch.zeros((), dtype=theta.dtype, device=theta.device)
        with torch.no_grad():
            for i in range(0, theta.shape[0], _VALIDATION_CHUNK):
                sl = slice(i, i + _VALIDATION_CHUNK)
                total += _negative_log_likelihood(net, theta[sl], x[sl]).sum()
        return float(total) / theta.shape[0]


def _wrap_zuko(flow: nn.Module, theta: Tensor, x: Tensor) -> ConditionalFlow:
    """A user's zuko conditional flow over x with context θ, z-scored on both sides."""
    net = ConditionalFlow(flow, Standardize(x), Standardize(theta)).to(theta.device)
    try:
        with torch.no_grad():
            net.log_prob(x[:2], theta[:2])
    except Exception as err:
        raise ValueError(
            f"The zuko flow must model x with {x.shape[-1]} features given a context of "
            f"{theta.shape[-1]} features (θ); evaluating it failed: {err}"
        ) from err
    return net


class NLE(NeuralEstimator):
    r"""Neural likelihood estimation (NLE, the ``sbi`` class ``NLE``/``NLE_A``).

    Args:
        prior: The prior over θ, event shape ``[D]`` (may instead go to ``build_posterior``).
        density_estimator: ``"maf"`` or ``"nsf"`` (zuko flows with ``sbi``'s defaults:
            ``hidden_features=50``, ``num_transforms=5``, ``num_bins=10``); a builder
            ``(batch_theta [N, D], batch_x [N, L]) -> module`` called once with the
            training data (e.g. :func:`~sbi_vi.estimators.likelihood_nn`), whose module has
            ``log_prob(x, theta)`` (and optionally a per-sample ``loss(x, theta)``) or is a
            zuko lazy flow ``flow(theta)`` over x; or a zuko lazy flow itself (x and θ are
            then z-scored independently around it).
        device: Training device.
        show_progress_bars: Show a tqdm bar over epochs while training.
        **net_kwargs: With a string ``density_estimator``: arguments of
            :func:`~sbi_vi.estimators.likelihood_nn` (``hidden_features``,
            ``num_transforms``, ``num_bins``, ``z_score_theta``, ``z_score_x``,
            ``embedding_net`` (on θ), ...).

    Raises:
        TypeError: For a ``density_estimator`` of the wrong kind, or ``net_kwargs`` with a
            non-string one.

    Example:
        >>> prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> theta = prior.sample((200,))
        >>> x = theta + 0.1 * torch.randn_like(theta)
        >>> nle = NLE(prior, show_progress_bars=False, num_transforms=1)
        >>> q = nle.append_simulations(theta, x).train(max_num_epochs=2, seed=0)
        >>> q.log_prob(x[:3], theta[:3]).shape
        torch.Size([3])
    """

    def __init__(
        self,
        prior: object | None = None,
        density_estimator: Literal["maf", "nsf"] | Callable | nn.Module = "maf",
        device: str = "cpu",
        show_progress_bars: bool = True,
        **net_kwargs: Any,
    ):
        super().__init__(prior, device, show_progress_bars)
        if isinstance(density_estimator, str):
            if density_estimator not in FLOW_NAMES:
                raise ValueError(
                    f"`density_estimator` must be one of {', '.join(map(repr, FLOW_NAMES))} or "
                    f"a callable builder; got {density_estimator!r}."
                )
            self._builder: Any = likelihood_nn(density_estimator, **net_kwargs)
        elif net_kwargs:
            raise TypeError(
                f"Keyword arguments {sorted(net_kwargs)} configure a named density estimator; "
                "a callable one is configured by its builder."
            )
        elif isinstance(density_estimator, zuko.lazy.LazyDistribution) or callable(
            density_estimator
        ):
            self._builder = density_estimator
        else:
            raise TypeError(
                "`density_estimator` must be 'maf', 'nsf', a builder (batch_theta, batch_x) -> "
                f"module, or a zuko flow; got {type(density_estimator).__name__}."
            )

    def _build_net(self, theta: Tensor, x: Tensor) -> nn.Module:
        if isinstance(self._builder, zuko.lazy.LazyDistribution):
            return _wrap_zuko(self._builder, theta, x)
        net = self._builder(theta, x)
        if isinstance(net, zuko.lazy.LazyDistribution):
            return _wrap_zuko(net, theta, x)
        if not (isinstance(net, nn.Module) and callable(getattr(net, "log_prob", None))):
            raise TypeError(
                "The density estimator builder must return an nn.Module with "
                f"`log_prob(x, theta)` or a zuko flow; got {type(net).__name__}."
            )
        return net.to(self._device)

    def _potential(self, net: nn.Module, prior: object) -> tuple[object, Transform]:
        return likelihood_estimator_based_potential(net, prior)

    def train(
        self,
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
        r"""Fit q(x | θ) to the stored simulations; arguments and defaults of ``sbi``.

        Args:
            training_batch_size: Pairs per gradient step.
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
            seed: Seed of the network initialisation, the split and the batches (the
                global RNG is restored afterwards).

        Returns:
            The trained network (weights of the best validation epoch, in eval mode and
            with ``requires_grad=False``; ``train`` re-enables gradients).

        Raises:
            RuntimeError: Without simulations, or on ``resume_training`` before training.
            ValueError: On invalid settings.
        """
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
            NLELoss(),
            config,
            resume_training=resume_training,
            discard_prior_samples=discard_prior_samples,
            retrain_from_scratch=retrain_from_scratch,
            show_train_summary=show_train_summary,
            seed=seed,
        )
