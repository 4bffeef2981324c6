"""Benchmark problems of the sbibm suite with their reference posteriors.

Each task has a prior, a vectorised and seedable simulator, the true log-likelihood, and ten
observations with true parameters and 10,000 reference posterior samples (data from sbibm,
Lueckmann et al. 2021, MIT licence, shipped in ``sbi_vi/tasks/data``).

Example:
    >>> from sbi_vi.tasks import get_task, list_tasks
    >>> list_tasks()
    ['gaussian_linear', 'slcp', 'two_moons']
    >>> task = get_task("two_moons")
    >>> task.dim_theta, task.dim_x
    (2, 2)
"""

from __future__ import annotations

from typing import Literal

from sbi_vi.tasks.base import Task, TaskPotential
from sbi_vi.tasks.gaussian_linear import GaussianLinear
from sbi_vi.tasks.slcp import SLCP
from sbi_vi.tasks.two_moons import TwoMoons

__all__ = [
    "SLCP",
    "GaussianLinear",
    "Task",
    "TaskName",
    "TaskPotential",
    "TwoMoons",
    "get_task",
    "list_tasks",
]

TaskName = Literal["gaussian_linear", "two_moons", "slcp"]

_REGISTRY: dict[str, type[Task]] = {cls.name: cls for cls in (GaussianLinear, TwoMoons, SLCP)}


def list_tasks() -> list[str]:
    """The names :func:`get_task` accepts, sorted.

    Returns:
        The task names.

    Example:
        >>> "slcp" in list_tasks()
        True
    """
    return sorted(_REGISTRY)


def get_task(name: TaskName) -> Task:
    """A new instance of the task called ``name``.

    Args:
        name: One of ``"gaussian_linear"``, ``"two_moons"``, ``"slcp"``.

    Returns:
        The task.

    Raises:
        ValueError: If ``name`` is not a registered task.

    Example:
        >>> get_task("slcp")
        SLCP(dim_theta=5, dim_x=8)
    """
    try:
        cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"`name` must be one of {', '.join(map(repr, list_tasks()))}; got {name!r}."
        ) from None
    return cls()
