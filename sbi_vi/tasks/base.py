r"""The :class:`Task` base class: a prior, a simulator, the true likelihood and reference data.

A task is a benchmark problem of the sbibm suite (Lueckmann et al., 2021): a prior
:math:`p(\theta)` with event shape ``[D]``, a simulator drawing :math:`x \sim p(x \mid \theta)`
with ``L`` numbers per draw, the likelihood :math:`\log p(x \mid \theta)` in closed form, and,
for each of ten observations :math:`x_o`, the parameters that generated it and 10,000 samples
of the reference posterior :math:`p(\theta \mid x_o)`.

Shapes use fixed letters: ``D`` parameters, ``L`` numbers per simulation, ``N`` simulations,
``N_iid`` independent rows of one observation, ``*`` any batch shape.
"""

from __future__ import annotations

import bz2
import functools
import io
import math
from abc import ABC, abstractmethod
from importlib import resources
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_vi._checks import as_tensor, check_positive_int

__all__ = ["Task", "TaskPotential"]

_DATA_PACKAGE = "sbi_vi.tasks"


@functools.lru_cache(maxsize=32)
def _read_csv(task_name: str, num_observation: int, filename: str) -> np.ndarray:
    """Read one data file shipped with the package (header row, comma-separated floats)."""
    path = (
        resources.files(_DATA_PACKAGE)
        / "data"
        / task_name
        / f"num_observation_{num_observation}"
        / filename
    )
    with path.open("rb") as raw:
        if filename.endswith(".bz2"):
            text = bz2.open(raw, "rt", encoding="ascii")
        else:
            text = io.TextIOWrapper(raw, encoding="ascii")
        with text:
            array = np.loadtxt(text, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    array.setflags(write=False)
    return array


class Task(ABC):
    r"""A benchmark problem: prior, simulator, true log-likelihood and reference posteriors.

    Subclasses set the class attributes and implement :meth:`_build_prior`,
    :meth:`_simulate` and :meth:`_log_likelihood`; the public methods check arguments and
    handle shapes, seeds and data files.

    Attributes:
        name: The task's registry name, also the folder of its data files.
        dim_theta: Number of parameters ``D``.
        dim_x: Numbers per simulation ``L``.
        num_observations: Number of observations with reference posteriors (10).
        prior: The prior, a torch ``Distribution`` with event shape ``[D]``.
    """

    name: ClassVar[str]
    dim_theta: ClassVar[int]
    dim_x: ClassVar[int]
    num_observations: ClassVar[int] = 10

    def __init__(self) -> None:
        self.prior: Distribution = self._build_prior()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim_theta={self.dim_theta}, dim_x={self.dim_x})"

    # ----------------------------------------------------------------------------------
    # What a subclass implements.

    @abstractmethod
    def _build_prior(self) -> Distribution:
        """Return the prior, a distribution with event shape ``[D]`` and empty batch shape."""

    @abstractmethod
    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        """Simulate: ``theta`` ``[N, D]`` (checked, floating) to ``x`` ``[N, L]``.

        Draw every random number with ``generator=generator`` (``None``: torch's global RNG).
        """

    @abstractmethod
    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """Element-wise ``log p(x | theta)``: ``theta`` ``[*, D]`` and ``x`` ``[*, L]``
        broadcast together; returns the broadcast batch shape. Never NaN: ``-inf`` where the
        density is zero."""

    # ----------------------------------------------------------------------------------
    # Simulation and likelihood.

    def simulator(self, theta: Tensor, *, seed: int | None = None) -> Tensor:
        """Simulate one data set per parameter vector.

        Args:
            theta: Parameters, shape ``[*, D]`` (usually ``[N, D]``).
            seed: Seed of a private ``torch.Generator``; the same seed gives the same ``x``,
                and torch's global RNG is left untouched. ``None`` (default) draws from
                torch's global RNG, so ``torch.manual_seed`` makes the result reproducible.

        Returns:
            Simulated data, shape ``[*, L]``, with the dtype and device of ``theta``.

        Raises:
            ValueError: If ``theta`` does not end in ``D`` or holds NaN/inf.
            TypeError: If ``theta`` is not array-like or ``seed`` is not an integer.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> task = get_task("two_moons")
            >>> task.simulator(task.prior.sample((5,)), seed=0).shape
            torch.Size([5, 2])
        """
        theta = self._check_theta(theta)
        if not bool(torch.isfinite(theta).all()):
            raise ValueError("`theta` must be finite, but it holds NaN or inf entries.")
        generator = None
        if seed is not None:
            seed = check_positive_int("seed", seed, allow_zero=True)
            generator = torch.Generator(device=theta.device).manual_seed(seed)
        batch_shape = theta.shape[:-1]
        x = self._simulate(theta.reshape(-1, self.dim_theta), generator)
        return x.reshape(*batch_shape, self.dim_x)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""The true log-likelihood :math:`\sum_i \log p(x_i \mid \theta)`.

        Args:
            theta: Parameters, shape ``[*, D]``.
            x: One observation ``[L]``, or ``[N_iid, L]`` rows drawn independently from the
                same ``theta``; their log-likelihoods are summed.

        Returns:
            Log-likelihood, shape ``[*]``, in the promoted dtype of ``theta`` and ``x``;
            ``-inf`` (never NaN) where the density is zero.

        Raises:
            ValueError: If ``theta`` does not end in ``D``, or ``x`` is not ``[L]`` or
                ``[N_iid, L]`` or holds NaN/inf.
            TypeError: If an argument is not array-like.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> task = get_task("gaussian_linear")
            >>> theta = task.prior.sample((7,))
            >>> task.log_likelihood(theta, task.get_observation(1)).shape
            torch.Size([7])
        """
        theta = self._check_theta(theta)
        x = self._check_x(x)
        dtype = torch.promote_types(theta.dtype, x.dtype)
        theta, x = theta.to(dtype), x.to(device=theta.device, dtype=dtype)
        return self._log_likelihood(theta.unsqueeze(-2), x).sum(-1)

    @property
    def likelihood(self) -> TaskLikelihood:
        """The true likelihood as a conditional density with ``log_prob(x, theta)``.

        ``log_prob`` is element-wise: x ``[*, L]`` and θ ``[*, D]`` with broadcastable
        leading shapes give ``[*]``; it plugs into
        :func:`sbi_vi.potentials.likelihood_estimator_based_potential` like a trained
        estimator.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> task = get_task("two_moons")
            >>> theta = task.prior.sample((4,))
            >>> task.likelihood.log_prob(task.simulator(theta), theta).shape
            torch.Size([4])
        """
        return TaskLikelihood(self)

    def potential(
        self, num_observation: int | None = None, *, x_o: Tensor | None = None
    ) -> TaskPotential:
        r"""The unnormalised log posterior :math:`\log p(x_o \mid \theta) + \log p(\theta)`.

        Give exactly one of ``num_observation`` and ``x_o``.

        Args:
            num_observation: Which stored observation to condition on, 1 to 10.
            x_o: An observation of your own, shape ``[L]`` or ``[N_iid, L]``.

        Returns:
            A callable mapping ``theta`` ``[*, D]`` to ``[*]``; ``-inf`` outside the prior's
            support.

        Raises:
            ValueError: If both or neither of the arguments are given, or one is invalid.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> task = get_task("slcp")
            >>> log_p = task.potential(1)
            >>> log_p(torch.full((2, 5), 4.0))  # outside the prior's box
            tensor([-inf, -inf])
        """
        if (num_observation is None) == (x_o is None):
            raise ValueError(
                "Give exactly one of `num_observation` and `x_o`; got "
                f"num_observation={num_observation!r} and x_o "
                f"{'None' if x_o is None else 'a tensor'}."
            )
        x_o = self.get_observation(num_observation) if x_o is None else self._check_x(x_o)
        return TaskPotential(self, x_o)

    # ----------------------------------------------------------------------------------
    # Reference data.

    def get_observation(self, num_observation: int) -> Tensor:
        """The stored observation ``x_o``.

        Args:
            num_observation: Which observation, 1 to 10.

        Returns:
            ``x_o``, shape ``[1, L]``, in torch's default dtype.

        Raises:
            TypeError: If ``num_observation`` is not an integer.
            ValueError: If ``num_observation`` is not in 1..10.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> get_task("slcp").get_observation(3).shape
            torch.Size([1, 8])
        """
        return self._load(num_observation, "observation.csv")

    def get_true_parameters(self, num_observation: int) -> Tensor:
        """The parameters that generated observation ``num_observation``.

        Args:
            num_observation: Which observation, 1 to 10.

        Returns:
            ``theta_o``, shape ``[1, D]``, in torch's default dtype.

        Raises:
            TypeError: If ``num_observation`` is not an integer.
            ValueError: If ``num_observation`` is not in 1..10.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> get_task("two_moons").get_true_parameters(1).shape
            torch.Size([1, 2])
        """
        return self._load(num_observation, "true_parameters.csv")

    def get_reference_posterior_samples(self, num_observation: int) -> Tensor:
        """The 10,000 reference posterior samples of observation ``num_observation``.

        Args:
            num_observation: Which observation, 1 to 10.

        Returns:
            Samples, shape ``[10000, D]``, in torch's default dtype.

        Raises:
            TypeError: If ``num_observation`` is not an integer.
            ValueError: If ``num_observation`` is not in 1..10.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> get_task("gaussian_linear").get_reference_posterior_samples(2).shape
            torch.Size([10000, 10])
        """
        return self._load(num_observation, "reference_posterior_samples.csv.bz2")

    def get_observation_seed(self, num_observation: int) -> int:
        """The seed sbibm used to draw observation ``num_observation`` (for provenance).

        Args:
            num_observation: Which observation, 1 to 10.

        Returns:
            The seed, an integer.

        Raises:
            TypeError: If ``num_observation`` is not an integer.
            ValueError: If ``num_observation`` is not in 1..10.

        Example:
            >>> from sbi_vi.tasks import get_task
            >>> get_task("slcp").get_observation_seed(1)
            1000000
        """
        num_observation = self._check_num_observation(num_observation)
        return int(_read_csv(self.name, num_observation, "observation_seed.csv")[0, 0])

    # ----------------------------------------------------------------------------------
    # Argument checks.

    def _load(self, num_observation: int, filename: str) -> Tensor:
        num_observation = self._check_num_observation(num_observation)
        array = _read_csv(self.name, num_observation, filename)
        return torch.tensor(array, dtype=torch.get_default_dtype())

    def _check_num_observation(self, num_observation: Any) -> int:
        n = self.num_observations
        if isinstance(num_observation, bool) or not isinstance(num_observation, int | np.integer):
            raise TypeError(
                f"`num_observation` must be an integer from 1 to {n}, got "
                f"{type(num_observation).__name__} {num_observation!r}."
            )
        if not 1 <= num_observation <= n:
            raise ValueError(
                f"`num_observation` must be an integer from 1 to {n}, got {num_observation}."
            )
        return int(num_observation)

    def _check_theta(self, theta: Any) -> Tensor:
        theta = as_tensor("theta", theta)
        if theta.ndim == 0 or theta.shape[-1] != self.dim_theta:
            raise ValueError(
                f"`theta` must have shape [*, {self.dim_theta}] for task {self.name!r}, got "
                f"shape {tuple(theta.shape)}."
            )
        return theta

    def _check_x(self, x: Any) -> Tensor:
        x = as_tensor("x", x)
        if x.ndim not in (1, 2) or x.shape[-1] != self.dim_x:
            raise ValueError(
                f"`x` must have shape [{self.dim_x}] or [N_iid, {self.dim_x}] for task "
                f"{self.name!r}, got shape {tuple(x.shape)}."
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("`x` must be finite, but it holds NaN or inf entries.")
        return x.reshape(-1, self.dim_x)


class TaskLikelihood:
    """The true likelihood of a task, element-wise: ``log_prob(x [*, L], theta [*, D]) -> [*]``."""

    def __init__(self, task: Task):
        self.task = task

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        """log p(x | θ) for x ``[*, L]`` and θ ``[*, D]`` (broadcast), shape ``[*]``."""
        theta = self.task._check_theta(theta)
        x = torch.as_tensor(x, dtype=theta.dtype, device=theta.device)
        return self.task._log_likelihood(theta.unsqueeze(-2), x.unsqueeze(-2)).squeeze(-1)

    def __repr__(self) -> str:
        return f"TaskLikelihood(task={self.task.name!r})"


class TaskPotential:
    r"""The unnormalised log posterior of a task for one observation (a picklable callable).

    ``potential(theta)`` is :math:`\log p(x_o \mid \theta) + \log p(\theta)`, shape ``[*]``
    for ``theta`` ``[*, D]``; ``-inf`` outside the prior's support, never NaN there.

    Args:
        task: The task.
        x_o: The observation, shape ``[N_iid, L]``.

    Example:
        >>> from sbi_vi.tasks import get_task
        >>> task = get_task("two_moons")
        >>> log_p = task.potential(1)
        >>> log_p(task.get_reference_posterior_samples(1)[:3]).isfinite().all()
        tensor(True)
    """

    def __init__(self, task: Task, x_o: Tensor):
        self.task = task
        self.x_o = x_o

    def __call__(self, theta: Tensor) -> Tensor:
        theta = self.task._check_theta(theta)
        log_prior = self.task.prior.log_prob(theta)
        log_lik = self.task.log_likelihood(theta, self.x_o)
        outside = torch.isneginf(log_prior) | torch.isnan(log_prior)
        return torch.where(outside, -math.inf, log_prior + log_lik)

    def __repr__(self) -> str:
        return f"TaskPotential(task={self.task.name!r}, x_o: {tuple(self.x_o.shape)})"
