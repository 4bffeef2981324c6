"""The primitives of a model: ``sample``, ``param``, ``module``, ``deterministic``, ``factor``,
``subsample`` (and ``plate``, in :mod:`sbi_vi.ppl.plate`).

Names and arguments follow NumPyro, in torch. With no handler active a primitive returns at
once, so calling a model is running a plain torch program: ``sample`` draws
``fn.rsample(sample_shape)`` (``fn.sample`` where the distribution has no
reparameterised sampler) or returns ``obs``; ``param`` returns its ``init_value``;
``deterministic`` and ``subsample`` return their input; ``factor`` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torch.distributions.constraints import Constraint

from sbi_vi.ppl.runtime import _STATE, Message, _draw, _initial_value, apply_stack

__all__ = ["Unit", "deterministic", "factor", "module", "param", "sample", "subsample"]


def _bad_name(name: Any, what: str) -> TypeError:
    return TypeError(f"{what} site name must be a str, got {type(name).__name__} {name!r}.")


def sample(
    name: str,
    fn: Distribution,
    obs: Tensor | None = None,
    *,
    sample_shape: tuple[int, ...] = (),
    infer: dict[str, Any] | None = None,
) -> Tensor:
    """A random variable drawn from ``fn``, or observed as ``obs``.

    Args:
        name: Site name, unique within the model.
        fn: A torch ``Distribution``. Inside plates it is expanded to the plate shape.
        obs: Observed value, shape ``[*sample_shape, *batch, *event]``; ``None`` for a
            latent site.
        sample_shape: Extra leading batch dims of the draw (folded into the batch shape
            inside plates, as in NumPyro).
        infer: Settings for inference algorithms, kept in ``Message.infer``.

    Returns:
        The drawn, observed or handler-supplied value.

    Raises:
        TypeError: If ``fn`` is not a torch ``Distribution``.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> sample("x", Normal(0.0, 1.0), obs=torch.tensor(0.5))
        tensor(0.5000)
    """
    if not isinstance(fn, Distribution):
        raise TypeError(
            f"sample site {name!r}: `fn` must be a torch.distributions.Distribution, got "
            f"{type(fn).__name__}."
        )
    if obs is not None and not isinstance(obs, Tensor):
        obs = torch.as_tensor(obs)
    if not _STATE.stack:
        return obs if obs is not None else _draw(fn, sample_shape)
    if type(name) is not str:
        raise _bad_name(name, "sample")
    msg = Message(
        name,
        "sample",
        fn,
        kwargs={"sample_shape": tuple(sample_shape)},
        value=obs,
        is_observed=obs is not None,
        infer={} if infer is None else infer,
    )
    return apply_stack(msg).value


def param(
    name: str,
    init_value: Tensor | Callable[[], Tensor] | None = None,
    constraint: Constraint = constraints.real,
    event_dim: int | None = None,
) -> Tensor:
    """An optimisable parameter.

    Under ``param_store(store=...)`` the value comes from the store (created there from
    ``init_value`` the first time, then learnt); without a store it is ``init_value``.

    Args:
        name: Site name (a parameter may be read at several places of one model).
        init_value: Initial value in the constrained space (any shape), or a zero-argument
            callable returning it (NumPyro's callable takes an RNG key; here draw with the
            torch RNG, which ``seed`` controls). May be omitted once the store holds
            ``name``.
        constraint: Support of the parameter; the store keeps it unconstrained through
            ``biject_to(constraint)``.
        event_dim: Number of rightmost dims that are not batch dims. When given, a
            subsampled enclosing plate indexes the value along the plate's dim (a local
            parameter: shape ``[N, ...]`` in the store, ``[n, ...]`` in the model).

    Returns:
        The constrained value.

    Raises:
        ValueError: If there is no ``init_value`` and no store holding ``name``.

    Example:
        >>> import torch
        >>> param("loc", torch.zeros(2))
        tensor([0., 0.])
    """
    if not _STATE.stack:
        return _initial_value(name, init_value)
    if type(name) is not str:
        raise _bad_name(name, "param")
    if event_dim is not None and (not isinstance(event_dim, int) or event_dim < 0):
        raise ValueError(f"param {name!r}: event_dim must be a non-negative int or None.")
    msg = Message(
        name, "param", init_value, kwargs={"constraint": constraint, "event_dim": event_dim}
    )
    return apply_stack(msg).value


def module(name: str, nn_module: nn.Module) -> nn.Module:
    """Register the parameters of ``nn_module`` as ``param`` sites ``f"{name}$$${path}"``.

    Under ``param_store(store=...)`` the store adopts the module's own ``nn.Parameter``
    objects the first time (so optimising ``store.parameters()`` trains the module); when
    the store (or a ``substitute``) already holds different tensors under those names,
    they are put into the module. Without a store the module is returned as it is.

    Args:
        name: Prefix of the parameter names.
        nn_module: The network.

    Returns:
        ``nn_module``, holding the parameters that the handlers supplied.
    """
    if not isinstance(nn_module, nn.Module):
        raise TypeError(f"module {name!r}: expected a torch.nn.Module, got {type(nn_module)}.")
    if not _STATE.stack:
        return nn_module
    for path, parameter in list(nn_module.named_parameters()):
        value = param(f"{name}$$${path}", parameter)
        if value is not parameter:
            owner_path, _, leaf = path.rpartition(".")
            owner = nn_module.get_submodule(owner_path) if owner_path else nn_module
            owner._parameters[leaf] = value  # a store leaf or a substituted tensor
    return nn_module


def deterministic(name: str, value: Tensor) -> Tensor:
    """Record ``value`` as site ``name`` (a function of other sites), and return it.

    Example:
        >>> import torch
        >>> deterministic("y", torch.tensor(2.0))
        tensor(2.)
    """
    if not _STATE.stack:
        return value
    if type(name) is not str:
        raise _bad_name(name, "deterministic")
    return apply_stack(Message(name, "deterministic", None, value=value)).value


class Unit(Distribution):
    """The distribution of a ``factor`` site: one empty value whose log density is given.

    Args:
        log_factor: Log density, shape ``[*batch]``.
    """

    arg_constraints: ClassVar[dict[str, Constraint]] = {}
    support = constraints.real

    def __init__(self, log_factor: Tensor) -> None:
        self.log_factor = torch.as_tensor(log_factor, dtype=torch.get_default_dtype())
        super().__init__(self.log_factor.shape, torch.Size([0]), validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Unit:
        return Unit(self.log_factor.expand(batch_shape))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.log_factor.new_empty(shape)

    def log_prob(self, value: Tensor) -> Tensor:
        shape = value.shape[:-1]
        if shape == self.batch_shape:
            return self.log_factor
        return self.log_factor + self.log_factor.new_zeros(shape)  # broadcast


def factor(name: str, log_factor: Tensor) -> None:
    """Add ``log_factor`` to the model's log density, as an observed site ``name``.

    Like NumPyro, the site is a ``"sample"`` message with a :class:`Unit` distribution, an
    empty observed value and ``infer={"is_auxiliary": True}``, so plates, ``scale`` and
    ``mask`` apply to it as to any sample site.

    Args:
        name: Site name.
        log_factor: Log density to add, shape ``[*batch]`` (broadcast with plates).
    """
    if not _STATE.stack:
        return
    unit = Unit(log_factor)
    sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True})


def subsample(data: Tensor, event_dim: int) -> Tensor:
    """Index ``data`` by the indices of every enclosing subsampled plate.

    Args:
        data: Full data, shape ``[..., N, *event]`` with ``N`` at each enclosing plate's
            dim (counted left of the ``event_dim`` rightmost dims).
        event_dim: Number of rightmost dims that are not batch dims.

    Returns:
        ``data`` with ``n`` instead of ``N`` along each subsampled plate's dim (``data``
        itself outside subsampled plates).

    Example:
        >>> import torch
        >>> from sbi_vi.ppl import plate
        >>> with plate("data", 4) as idx:
        ...     subsample(torch.arange(8.0).reshape(4, 2), event_dim=1).shape
        torch.Size([4, 2])
    """
    if not _STATE.stack:
        return data
    msg = Message("", "subsample", None, kwargs={"event_dim": event_dim}, value=data)
    return apply_stack(msg).value
