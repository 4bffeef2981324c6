"""An explicit parameter store: unconstrained leaves for the optimiser, constrained values out.

There is no global store. A :class:`ParamStore` reaches ``param`` sites only through the
``param_store`` handler, so two models in one process never share parameters unless they
are given the same store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import biject_to, constraints
from torch.distributions.constraints import Constraint
from torch.distributions.transforms import ExpTransform, Transform

__all__ = ["ParamStore"]


class ParamStore:
    """Named parameters, held unconstrained and handed out constrained.

    Each parameter is an unconstrained leaf ``u`` (an ``nn.Parameter``) with a constraint;
    its value is ``biject_to(constraint)(u)``, recomputed on every read so gradients reach
    ``u``. A parameter is created the first time a ``param`` site asks for it (from the
    site's ``init_value``, given in the constrained space); later reads return the stored
    value and ignore ``init_value``.

    Example:
        >>> import torch
        >>> from torch.distributions import constraints
        >>> store = ParamStore()
        >>> store.setdefault("s", torch.ones(2), constraint=constraints.positive).detach()
        tensor([1., 1.])
        >>> [tuple(p.shape) for p in store.parameters()]
        [(2,)]
    """

    def __init__(self) -> None:
        self._leaves: dict[str, nn.Parameter] = {}
        self._constraints: dict[str, Constraint | None] = {}
        self._transforms: dict[str, Transform | None] = {}

    # --- creation and reads ---------------------------------------------------------------

    def setdefault(
        self,
        name: str,
        init_value: Tensor | Callable[[], Tensor] | None,
        *,
        constraint: Constraint = constraints.real,
    ) -> Tensor:
        """The constrained value of ``name``, created from ``init_value`` if new.

        Args:
            name: Parameter name.
            init_value: Initial constrained value (any shape), or a zero-argument callable
                returning it. An ``nn.Parameter`` with a ``real`` constraint is adopted as
                the leaf itself (how ``module`` shares a network's parameters).
            constraint: Support of the parameter.

        Returns:
            The constrained value, differentiable with respect to the stored leaf.

        Raises:
            ValueError: If ``name`` is new and ``init_value`` is missing or outside the
                support.
        """
        transform = self._transforms.get(name, _MISSING)
        if transform is _MISSING or transform is _PENDING:
            return self._create(name, init_value, constraint)
        leaf = self._leaves[name]
        return leaf if transform is None else transform(leaf)

    def _create(self, name: str, init_value: Any, constraint: Constraint) -> Tensor:
        if not isinstance(constraint, Constraint):
            raise TypeError(
                f"param {name!r}: `constraint` must be a torch.distributions constraint, "
                f"got {type(constraint).__name__}."
            )
        transform = _transform_for(constraint)
        pending = self._leaves.get(name)
        if pending is not None:  # loaded by load_state_dict before its constraint was known
            self._constraints[name] = constraint
            self._transforms[name] = transform
            return pending if transform is None else transform(pending)
        if init_value is None:
            raise ValueError(
                f"param {name!r} is not in the store and has no `init_value`; pass "
                "`init_value=` at the param site or load the store from a state dict."
            )
        value = init_value() if callable(init_value) else init_value
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        if transform is None and isinstance(value, nn.Parameter):
            leaf = value
        else:
            with torch.no_grad():
                if not bool(constraint.check(value).all()):
                    raise ValueError(
                        f"param {name!r}: `init_value` lies outside its constraint "
                        f"{constraint}; give an initial value inside the support."
                    )
                raw = value if transform is None else transform.inv(value)
                leaf = nn.Parameter(raw.detach().clone())
        self._leaves[name] = leaf
        self._constraints[name] = constraint
        self._transforms[name] = transform
        return leaf if transform is None else transform(leaf)

    def get(self, name: str) -> Tensor:
        """The constrained value of ``name`` (differentiable; ``.detach()`` to summarise).

        Raises:
            KeyError: If the store has no parameter ``name``.
        """
        if name not in self._leaves:
            known = ", ".join(map(repr, self._leaves)) or "none"
            raise KeyError(
                f"the parameter store has no parameter {name!r} (it has: {known}); run the "
                "model or guide once under `param_store(store=...)` to create it."
            )
        constraint = self._constraints[name]
        if constraint is None:
            raise KeyError(
                f"parameter {name!r} was loaded from a state dict but its constraint is "
                "known only once its param site runs; run the model or guide once under "
                "`param_store(store=...)`."
            )
        return self.setdefault(name, None, constraint=constraint)

    __getitem__ = get

    def constrained(self) -> dict[str, Tensor]:
        """Every parameter's constrained value, by name (differentiable)."""
        return {name: self.get(name) for name in self._leaves}

    def unconstrained(self, name: str) -> nn.Parameter:
        """The unconstrained leaf of ``name`` (what the optimiser updates)."""
        return self._leaves[name]

    def constraint(self, name: str) -> Constraint | None:
        """The constraint of ``name`` (``None`` for a loaded, not yet used parameter)."""
        return self._constraints[name]

    # --- what the optimiser needs ------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        """The unconstrained leaves, in creation order (hand them to the optimiser)."""
        return list(self._leaves.values())

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, unconstrained leaf)`` pairs, in creation order."""
        return iter(self._leaves.items())

    # --- mapping protocol ----------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._leaves

    def __iter__(self) -> Iterator[str]:
        return iter(self._leaves)

    def __len__(self) -> int:
        return len(self._leaves)

    def keys(self) -> list[str]:
        """Parameter names, in creation order."""
        return list(self._leaves)

    def clear(self) -> None:
        """Forget every parameter."""
        self._leaves.clear()
        self._constraints.clear()
        self._transforms.clear()

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {tuple(p.shape)}" for n, p in self._leaves.items())
        return f"ParamStore({shapes})"

    # --- saving ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """Detached copies of the unconstrained leaves, by name.

        Tensors only, so ``torch.load(..., weights_only=True)`` reads a saved state. The
        constraints are not saved: they come back from the param sites.
        """
        return {name: leaf.detach().clone() for name, leaf in self._leaves.items()}

    def load_state_dict(self, state: Mapping[str, Tensor], *, strict: bool = True) -> None:
        """Load unconstrained values saved by :meth:`state_dict`.

        Parameters already in the store are overwritten in place, so an optimiser holding
        their leaves keeps working. New names are stored and take their constraint from
        the first param site that reads them.

        Args:
            state: Unconstrained values by name, as returned by :meth:`state_dict`.
            strict: Whether to raise if the store holds parameters that ``state`` lacks.

        Raises:
            ValueError: On a shape mismatch, or (``strict``) on parameters missing from
                ``state``.
        """
        missing = [name for name in self._leaves if name not in state]
        if strict and missing:
            raise ValueError(
                f"state dict lacks parameters {missing} of this store; pass strict=False "
                "to keep their current values."
            )
        for name, value in state.items():
            value = torch.as_tensor(value)
            leaf = self._leaves.get(name)
            if leaf is None:
                self._leaves[name] = nn.Parameter(value.detach().clone())
                self._constraints[name] = None
                self._transforms[name] = _PENDING
            elif leaf.shape != value.shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(leaf.shape)} in the store but "
                    f"{tuple(value.shape)} in the state dict."
                )
            else:
                with torch.no_grad():
                    leaf.copy_(value)


def _transform_for(constraint: Constraint) -> Transform | None:
    """``biject_to(constraint)``; ``None`` for ``real``; plain ``exp`` for ``positive``."""
    if constraint is constraints.real:
        return None
    if constraint is constraints.positive:
        return ExpTransform()  # torch composes exp with a no-op shift by the lower bound 0
    return biject_to(constraint)


_MISSING: Any = object()  # not in the store
_PENDING: Any = object()  # loaded from a state dict, constraint not known yet
