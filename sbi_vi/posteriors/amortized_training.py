"""One ``train_amortized`` call: its settings, checked up front, and the fit of q(θ | x).

Each iteration draws ``batch_size`` observations of the training split and ``n_particles``
θ ~ q(θ | x) for each, and minimises the posterior's divergence averaged over the
observations, through :func:`sbi_vi.vi.fit.fit`; a :class:`~sbi_vi.vi.validation.
ValidationStopping` rule scores a fixed held-out subset with common random numbers and keeps
the best weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions.transforms import Transform

from sbi_vi._checks import (
    check_choice,
    check_in_interval,
    check_positive_float,
    check_positive_int,
)
from sbi_vi.posteriors.conditional import ConditionalQ, build_conditional_q
from sbi_vi.vi.fit import FitResult, fit, make_optimizer
from sbi_vi.vi.validation import ValidationStopping, common_random_numbers

__all__ = ["AmortizedSettings", "fit_conditional"]

_VALIDATION_SEED = 20_231_121  # fixed draws for the validation loss (common random numbers)
_Z_SCORES = ("none", "independent", "structured")


@dataclass(frozen=True)
class AmortizedSettings:
    """The checked settings of one ``train_amortized`` call (see its docstring)."""

    q: str
    num_transforms: int
    hidden_features: int
    z_score_theta: str
    z_score_x: str
    n_particles: int
    batch_size: int
    max_num_iters: int
    stop_after_iters: int
    learning_rate: float
    gamma: float
    clip_value: float
    validation_fraction: float
    validation_batch_size: int
    validation_n_particles: int

    @classmethod
    def from_arguments(
        cls, defaults: dict[str, Any], params: Any, **args: Any
    ) -> AmortizedSettings:
        """Resolve the family settings (argument, else ``params``, else ``defaults``) and
        check every hyper-parameter.

        Raises:
            ValueError: A non-positive size or rate, ``gamma`` outside (0, 1],
                ``validation_fraction`` outside (0, 1), an unknown standardisation, or a
                ``params.q`` that is not a name.
            TypeError: A hyper-parameter that is not a number.
        """
        q = args["flow_type"]
        if q is None and params is not None:
            q = getattr(params, "q", None)
            if q is not None and not isinstance(q, str):
                raise ValueError(
                    "train_amortized() builds its conditional family by name; `params.q` is a "
                    f"{type(q).__name__}. Use a name such as 'nsf' or 'maf'."
                )
        q = "nsf" if q is None else getattr(q, "value", q)  # sbi's ZukoFlowType enum values
        q = q.lower() if isinstance(q, str) else q
        resolved = {
            name: _fallback(args[name], params, name, defaults[name])
            for name in ("num_transforms", "hidden_features", "z_score_theta", "z_score_x")
        }
        num_transforms = check_positive_int("num_transforms", resolved["num_transforms"])
        hidden_features = check_positive_int("hidden_features", resolved["hidden_features"])
        check_choice("z_score_theta", resolved["z_score_theta"], _Z_SCORES)
        check_choice("z_score_x", resolved["z_score_x"], _Z_SCORES)
        n_particles = check_positive_int("n_particles", args["n_particles"])
        batch_size = check_positive_int("batch_size", args["batch_size"])
        val_batch, val_particles = args["validation_batch_size"], args["validation_n_particles"]
        return cls(
            q=q,
            num_transforms=num_transforms,
            hidden_features=hidden_features,
            z_score_theta=resolved["z_score_theta"],
            z_score_x=resolved["z_score_x"],
            n_particles=n_particles,
            batch_size=batch_size,
            max_num_iters=check_positive_int("max_num_iters", args["max_num_iters"]),
            stop_after_iters=check_positive_int("stop_after_iters", args["stop_after_iters"]),
            learning_rate=_checked(check_positive_float, "learning_rate", args),
            gamma=_checked(check_in_interval, "gamma", args, 0.0, 1.0, closed="right"),
            clip_value=_checked(check_positive_float, "clip_value", args),
            validation_fraction=check_in_interval(
                "validation_fraction", args["validation_fraction"], 0.0, 1.0
            ),
            validation_batch_size=check_positive_int(
                "validation_batch_size", batch_size if val_batch is None else val_batch
            ),
            validation_n_particles=check_positive_int(
                "validation_n_particles", n_particles if val_particles is None else val_particles
            ),
        )

    def split_sizes(self, num_pairs: int) -> tuple[int, int]:
        """``(num_train, num_val)`` of ``num_pairs`` simulated pairs.

        Raises:
            ValueError: An empty validation split, or a training split under ``batch_size``.
        """
        num_val = int(self.validation_fraction * num_pairs)
        num_train = num_pairs - num_val
        if num_val == 0:
            raise ValueError(
                f"The validation split is empty: {num_pairs} pairs × validation_fraction="
                f"{self.validation_fraction} < 1. Pass more pairs or a larger "
                "validation_fraction."
            )
        if num_train < self.batch_size:
            raise ValueError(
                f"The training split has {num_train} pairs, fewer than batch_size="
                f"{self.batch_size}. Pass more pairs, a smaller batch_size or "
                "validation_fraction."
            )
        return num_train, num_val


def _checked(check: Any, name: str, args: dict, *more: Any, **options: Any) -> Any:
    """Run ``check`` on ``args[name]`` and keep the value as passed (as before)."""
    check(name, args[name], *more, **options)
    return args[name]


def _fallback(value: Any, params: Any, name: str, default: Any) -> Any:
    """Explicit argument, else the attribute of ``params``, else the instance default."""
    if value is not None:
        return value
    if params is not None and getattr(params, name, None) is not None:
        return getattr(params, name)
    return default


def fit_conditional(
    settings: AmortizedSettings,
    previous: ConditionalQ | None,
    potential: Any,
    divergence: Any,
    theta: Tensor,
    x: Tensor,
    *,
    prior: Any,
    transform: Transform,
    direction: str,
    device: str,
    show_progress_bar: bool,
    description: str,
) -> tuple[ConditionalQ, FitResult, list[float]]:
    """Split the pairs, build (or continue ``previous``) and fit q(θ | x).

    Returns:
        The trained q (in eval mode), the fit result and the validation losses.
    """
    num_train, _ = settings.split_sizes(x.shape[0])
    perm = torch.randperm(x.shape[0], device=x.device)
    train_idx, val_idx = perm[:num_train], perm[num_train:]
    x_train, x_val = x[train_idx], x[val_idx]
    x_val = x_val[: settings.validation_batch_size]  # a fixed random subset, scored each iter
    if previous is None:
        q = build_conditional_q(
            settings.q,
            prior=prior,
            transform=transform,
            theta=theta[train_idx],
            x=x_train,
            num_transforms=settings.num_transforms,
            hidden_features=settings.hidden_features,
            z_score_theta=settings.z_score_theta,  # type: ignore[arg-type]
            z_score_x=settings.z_score_x,  # type: ignore[arg-type]
            direction=direction,
            device=device,
        )
    else:
        q = previous
    result, rule = _fit(
        q, potential, divergence, x_train, x_val, settings, show_progress_bar, description
    )
    return q.eval(), result, list(rule.losses)


def _fit(
    q: ConditionalQ,
    potential: Any,
    divergence: Any,
    x_train: Tensor,
    x_val: Tensor,
    settings: AmortizedSettings,
    show_progress_bar: bool,
    description: str,
) -> tuple[FitResult, ValidationStopping]:
    """The amortised objective through :func:`sbi_vi.vi.fit.fit`, stopped on validation."""
    num_train = x_train.shape[0]
    batch_size = settings.batch_size

    def closure() -> tuple[Tensor, Tensor]:
        idx = torch.randint(num_train, (batch_size,), device=x_train.device)
        x_batch = x_train[idx]
        potential.set_x(x_batch, x_is_iid=False)
        out = divergence(q, potential, settings.n_particles, context=x_batch)
        return out.loss, out.value.mean()

    def validate() -> float:
        potential.set_x(x_val, x_is_iid=False)
        with common_random_numbers(_VALIDATION_SEED):
            out = divergence(q, potential, settings.validation_n_particles, context=x_val)
        return float(out.value.mean())

    optimizer, scheduler = make_optimizer(
        q.parameters(), learning_rate=settings.learning_rate, gamma=settings.gamma
    )
    rule = ValidationStopping(validate, q, stop_after_iters=settings.stop_after_iters)
    q.train()
    try:
        result = fit(
            closure,
            optimizer,
            scheduler=scheduler,
            max_num_iters=settings.max_num_iters,
            clip_value=settings.clip_value,
            stopping=rule,
            show_progress_bar=show_progress_bar,
            description=description,
        )
    finally:
        rule.restore_best()
        q.eval()
    return result, rule
