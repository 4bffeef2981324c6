"""What NLE and NRE share: the simulation store, the training call and the posterior.

:class:`NeuralEstimator` keeps the simulations of every round (``append_simulations``),
builds the network from the training split on the first ``train`` call, runs the shared
loop of :mod:`sbi_vi.estimators.training` with the subclass's loss, keeps the summary of
every round, and wraps the trained network into a :class:`~sbi_vi.posteriors.VIPosterior`.
"""

from __future__ import annotations

import abc
import logging
import warnings
from pathlib import Path
from typing import Any, Literal, Self

import torch
from torch import Tensor, nn
from torch.distributions.transforms import Transform
from tqdm.auto import tqdm

from sbi_vi._checks import as_tensor, check_positive_int, seeded
from sbi_vi._io import load_object, save_object
from sbi_vi.errors import NotTrainedError, SimulationWarning
from sbi_vi.estimators.training import (
    EstimatorLoss,
    TrainConfig,
    TrainState,
    make_adam,
    snapshot,
    split_indices,
    train_loop,
)
from sbi_vi.priors import process_prior
from sbi_vi.vi.divergences import VIMethod

__all__ = ["NeuralEstimator"]

logger = logging.getLogger(__name__)

_RESERVED_VI_KEYS = ("potential_fn", "prior", "theta_transform")


class NeuralEstimator(abc.ABC):
    """Base class of the neural estimators (simulation store, training, posterior).

    Args:
        prior: The prior over θ (event shape ``[D]``); may be given later to
            ``build_posterior`` instead.
        device: Device of the network and of the stored simulations.
        show_progress_bars: Show a tqdm bar while training.
    """

    def __init__(
        self,
        prior: object | None = None,
        device: str = "cpu",
        show_progress_bars: bool = True,
    ):
        self._prior = None if prior is None else process_prior(prior)
        self._device = str(torch.device(device))
        self._show_progress_bars = bool(show_progress_bars)
        self._theta_roundwise: list[Tensor] = []
        self._x_roundwise: list[Tensor] = []
        self._data_round_index: list[int] = []
        self._neural_net: nn.Module | None = None
        self._net_trained = False  # True once the network finished one training epoch
        self._state: TrainState | None = None
        self._round = 0
        self._summary: dict[str, list] = {
            "epochs_trained": [],
            "best_validation_loss": [],
            "validation_loss": [],
            "training_loss": [],
            "epoch_durations_sec": [],
        }

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _build_net(self, theta: Tensor, x: Tensor) -> nn.Module:
        """Build the network from training data θ ``[N, D]``, x ``[N, L]``."""

    @abc.abstractmethod
    def _potential(self, net: nn.Module, prior: object) -> tuple[object, Transform]:
        """``(potential, theta_transform)`` of the trained network."""

    # ------------------------------------------------------------------ data
    @property
    def summary(self) -> dict[str, list]:
        """Training summary: ``epochs_trained`` and ``best_validation_loss`` per round,
        ``training_loss``, ``validation_loss`` and ``epoch_durations_sec`` per epoch."""
        return self._summary

    @property
    def prior(self) -> object | None:
        """The prior given to the constructor (``None`` if none was)."""
        return self._prior

    def append_simulations(
        self,
        theta: Tensor,
        x: Tensor,
        exclude_invalid_x: bool = True,
        from_round: int = 0,
        data_device: str | None = None,
    ) -> NeuralEstimator:
        """Store simulations ``(theta, x)`` for training; chainable.

        Calls accumulate: every call adds a round of simulations to the training data.

        Args:
            theta: Parameters, shape ``[N, D]`` (``D`` as the prior's event shape).
            x: Simulation outputs, shape ``[N, L]``.
            exclude_invalid_x: Drop the pairs whose x holds NaN or inf, with a
                :class:`~sbi_vi.errors.SimulationWarning` counting them. If ``False``,
                such pairs raise a ``ValueError``.
            from_round: Round the simulations come from (0: the prior); used by
                ``train(discard_prior_samples=True)``.
            data_device: Where to store the data (default: the training device).

        Returns:
            The estimator itself.

        Raises:
            ValueError: On wrong shapes, non-finite θ, invalid x with
                ``exclude_invalid_x=False``, or no valid simulation left.
        """
        from_round = check_positive_int("from_round", from_round, allow_zero=True)
        theta = as_tensor("theta", theta, dtype=torch.get_default_dtype())
        x = as_tensor("x", x, dtype=torch.get_default_dtype())
        if theta.ndim != 2:
            raise ValueError(
                f"`theta` must have shape [N, D] (a batch of parameter vectors); got "
                f"{tuple(theta.shape)}."
            )
        if x.ndim != 2:
            raise ValueError(
                f"`x` must have shape [N, L] (a batch of simulation outputs); got "
                f"{tuple(x.shape)}. Flatten structured outputs first."
            )
        if theta.shape[0] != x.shape[0]:
            raise ValueError(
                f"`theta` and `x` must hold the same number of simulations; got "
                f"{theta.shape[0]} and {x.shape[0]}."
            )
        if theta.shape[0] == 0:
            raise ValueError("`theta` and `x` are empty; append at least one simulation.")
        self._check_dims(theta, x)
        if not bool(torch.isfinite(theta).all()):
            raise ValueError("`theta` must be finite; it holds NaN or inf entries.")
        valid = torch.isfinite(x).all(-1)
        n_invalid = int((~valid).sum())
        if n_invalid:
            n_nan = int(torch.isnan(x).any(-1).sum())
            detail = f"{n_nan} with NaN, {n_invalid - n_nan} with inf only"
            if not exclude_invalid_x:
                raise ValueError(
                    f"{n_invalid} of {x.shape[0]} simulations are invalid ({detail}); pass "
                    "`exclude_invalid_x=True` to drop them."
                )
            if n_invalid == x.shape[0]:
                raise ValueError(f"All {n_invalid} simulations are invalid ({detail}).")
            warnings.warn(
                f"Dropped {n_invalid} of {x.shape[0]} simulations whose x is not finite "
                f"({detail}).",
                SimulationWarning,
                stacklevel=2,
            )
            theta, x = theta[valid], x[valid]
        device = self._device if data_device is None else data_device
        self._theta_roundwise.append(theta.to(device))
        self._x_roundwise.append(x.to(device))
        self._data_round_index.append(from_round)
        return self

    def _check_dims(self, theta: Tensor, x: Tensor) -> None:
        if self._prior is not None:
            shape = getattr(self._prior, "event_shape", None)
            if shape is not None and len(shape) == 1 and theta.shape[-1] != shape[0]:
                raise ValueError(
                    f"`theta` has {theta.shape[-1]} columns but the prior's event shape is "
                    f"{tuple(shape)}."
                )
        if self._theta_roundwise:
            d, l_ = self._theta_roundwise[0].shape[-1], self._x_roundwise[0].shape[-1]
            if theta.shape[-1] != d or x.shape[-1] != l_:
                raise ValueError(
                    f"New simulations have shapes [N, {theta.shape[-1]}], [N, {x.shape[-1]}] "
                    f"but earlier ones [N, {d}], [N, {l_}]."
                )

    def get_simulations(self, starting_round: int = 0) -> tuple[Tensor, Tensor]:
        """All stored ``(theta [N, D], x [N, L])`` from rounds ``>= starting_round``.

        Raises:
            RuntimeError: If no simulations were appended.
        """
        if not self._theta_roundwise:
            raise RuntimeError(
                "No simulations found: call `append_simulations(theta, x)` before `train()`."
            )
        keep = [i for i, r in enumerate(self._data_round_index) if r >= starting_round]
        if not keep:
            raise RuntimeError(f"No simulations from round {starting_round} on.")
        theta = torch.cat([self._theta_roundwise[i] for i in keep])
        x = torch.cat([self._x_roundwise[i] for i in keep])
        return theta, x

    # ------------------------------------------------------------------ training
    def _train(
        self,
        loss: EstimatorLoss,
        config: TrainConfig,
        *,
        resume_training: bool,
        discard_prior_samples: bool,
        retrain_from_scratch: bool,
        show_train_summary: bool,
        seed: int | None,
    ) -> nn.Module:
        """Shared body of ``train``: data, network, state, loop, summary."""
        self._round = max(self._data_round_index) if self._data_round_index else 0
        start_round = int(discard_prior_samples and self._round > 0)
        theta, x = self.get_simulations(start_round)
        theta, x = theta.to(self._device), x.to(self._device)
        with seeded(seed):
            if resume_training:
                if self._state is None or self._neural_net is None:
                    raise RuntimeError("`resume_training=True` needs an earlier `train()` call.")
                if self._state.num_simulations != theta.shape[0]:
                    raise ValueError(
                        "The simulations changed since the last `train()`; resume only without "
                        "new data, or call `train()` without `resume_training`."
                    )
                state = self._state
            else:
                train_idx, val_idx = split_indices(
                    theta.shape[0], config.validation_fraction, theta.device
                )
                if self._neural_net is None or retrain_from_scratch:
                    self._neural_net = self._checked_net(
                        self._build_net(theta[train_idx], x[train_idx])
                    )
                    self._net_trained = False
                self._neural_net.to(self._device).requires_grad_(True)  # Adam sees them all
                params = list(self._neural_net.parameters())
                state = TrainState(
                    make_adam(params, config.learning_rate), train_idx, val_idx, theta.shape[0]
                )
                self._state = state
            net = self._neural_net.requires_grad_(True)
            trained_before = getattr(self, "_net_trained", True)  # pickles from before it
            if state.best_weights is None and trained_before:  # continue a trained net:
                state.best_weights = snapshot(net, None)  # an interrupt before 1 epoch keeps it
            summary = self._summary
            epochs_before = state.epoch

            def record(train_loss: float, val_loss: float, seconds: float) -> None:
                summary["training_loss"].append(train_loss)
                summary["validation_loss"].append(val_loss)
                summary["epoch_durations_sec"].append(seconds)

            try:
                train_loop(
                    net,
                    loss,
                    theta,
                    x,
                    state,
                    config,
                    description=f"Training {type(self).__name__}",
                    on_epoch=record,
                )
            finally:  # also after an exception or Ctrl-C: a consistent, usable estimator
                net.zero_grad(set_to_none=True)
                net.requires_grad_(False)  # a frozen estimator makes VI's backward cheaper
                self._net_trained = trained_before or state.epoch > 0
                summary["epochs_trained"].append(state.epoch)
                summary["best_validation_loss"].append(state.best_val_loss)
        if show_train_summary:
            tqdm.write(
                f"{type(self).__name__} round {self._round}: {state.epoch - epochs_before} "
                f"epochs ({state.epoch} in all), best validation loss "
                f"{state.best_val_loss:.4f}."
            )
        return net

    def _checked_net(self, net: Any) -> nn.Module:
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"The network builder must return an nn.Module; got {type(net).__name__}."
            )
        return net

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save the whole estimator (simulations, network, optimizer, summary) to ``path``.

        The file records the sbi_vi version that wrote it. ``torch.save(estimator, path)``
        and pickling work too; this adds the checks of :meth:`load`.

        Args:
            path: The file to write.
        """
        save_object(self, path, what=type(self).__name__)

    @classmethod
    def load(cls, path: str | Path, map_location: str | None = None) -> Self:
        """Load an estimator written by :meth:`save` (or by ``torch.save`` of one).

        Args:
            path: The file.
            map_location: Passed to :func:`torch.load`.

        Returns:
            The estimator, ready to ``train(resume_training=True)`` or ``build_posterior``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: The file is truncated, corrupted, not a torch file, or holds
                something other than a ``cls`` (naming the file and, when recorded, the
                sbi_vi version that wrote it).
        """
        return load_object(path, what=cls.__name__, expected_type=cls, map_location=map_location)

    # ------------------------------------------------------------------ posterior
    def build_posterior(
        self,
        density_estimator: nn.Module | None = None,
        prior: object | None = None,
        sample_with: Literal["vi"] = "vi",
        vi_method: VIMethod = "rKL",
        vi_parameters: dict[str, Any] | None = None,
    ) -> Any:
        """A :class:`~sbi_vi.posteriors.VIPosterior` on the trained network (untrained q).

        Args:
            density_estimator: The network to use (default: the one trained last).
            prior: The prior (default: the constructor's).
            sample_with: Only ``"vi"``: sbi_vi samples with variational inference.
            vi_method: Divergence: ``rKL``, ``fKL``, ``IW`` or ``alpha``.
            vi_parameters: Further ``VIPosterior`` arguments, e.g. ``{"q": "nsf"}``.

        Returns:
            The posterior; call ``set_default_x(x_o)`` and ``train()`` on it.

        Raises:
            ValueError: Without a prior, for ``sample_with != "vi"`` or reserved keys in
                ``vi_parameters``.
            NotTrainedError: If no network finished a training epoch and none is given (a
                ``ValueError`` and a ``RuntimeError``).
        """
        from sbi_vi.posteriors import VIPosterior

        if sample_with != "vi":
            raise ValueError(
                f"`sample_with` must be 'vi' (sbi_vi builds variational posteriors); got "
                f"{sample_with!r}."
            )
        net = density_estimator if density_estimator is not None else self._neural_net
        if net is None:
            raise NotTrainedError("No trained network: call `train()` first or pass one.")
        if density_estimator is None and not getattr(self, "_net_trained", True):
            raise NotTrainedError(
                "The network never finished a training epoch (the last `train()` was "
                "interrupted before the first epoch ended): call `train()` again."
            )
        prior = prior if prior is not None else self._prior
        if prior is None:
            raise ValueError(
                "`prior` is required: pass it here or to the constructor of the estimator."
            )
        params = dict(vi_parameters or {})
        reserved = sorted(set(params) & set(_RESERVED_VI_KEYS))
        if reserved:
            raise ValueError(
                f"`vi_parameters` must not set {', '.join(map(repr, reserved))}: they come "
                "from the estimator and `prior`."
            )
        if "vi_method" in params and params["vi_method"] != vi_method:
            raise ValueError(
                f"`vi_method={vi_method!r}` conflicts with vi_parameters['vi_method']="
                f"{params['vi_method']!r}."
            )
        params["vi_method"] = vi_method
        params.setdefault("device", self._device)
        potential, transform = self._potential(net, process_prior(prior))
        return VIPosterior(potential, prior=potential.prior, theta_transform=transform, **params)
