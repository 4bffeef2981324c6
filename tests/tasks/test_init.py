"""The task registry: get_task and list_tasks."""

from __future__ import annotations

import pytest

from sbi_vi.tasks import SLCP, GaussianLinear, Task, TwoMoons, get_task, list_tasks


def test_list_tasks() -> None:
    assert list_tasks() == ["gaussian_linear", "slcp", "two_moons"]


@pytest.mark.parametrize(
    ("name", "cls", "dim_theta", "dim_x"),
    [
        ("gaussian_linear", GaussianLinear, 10, 10),
        ("two_moons", TwoMoons, 2, 2),
        ("slcp", SLCP, 5, 8),
    ],
)
def test_get_task(name: str, cls: type[Task], dim_theta: int, dim_x: int) -> None:
    task = get_task(name)  # type: ignore[arg-type]
    assert isinstance(task, cls)
    assert task.name == name
    assert (task.dim_theta, task.dim_x, task.num_observations) == (dim_theta, dim_x, 10)
    assert get_task(name) is not task  # a fresh instance each time
    assert cls.__name__ in repr(task)


@pytest.mark.parametrize("bad", ["Two_Moons", "sir", "", None, 3])
def test_get_task_unknown_name_lists_valid_names(bad: object) -> None:
    with pytest.raises(ValueError, match="`name` must be one of 'gaussian_linear', 'slcp'"):
        get_task(bad)  # type: ignore[arg-type]
