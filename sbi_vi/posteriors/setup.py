"""Turning the constructor arguments of a posterior into composed parts.

Kept apart from :mod:`sbi_vi.posteriors.vi_posterior` so that the public class only wires
parts together: which prior, which potential, which transform, which family.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.distributions.transforms import Transform

from sbi_vi._checks import check_choice
from sbi_vi.estimators.zscore import ZScore
from sbi_vi.potentials import (
    BasePotential,
    CallablePotential,
    SbiStylePotential,
    is_sbi_style_potential,
)
from sbi_vi.priors import process_prior
from sbi_vi.priors import theta_transform as default_theta_transform
from sbi_vi.vi.families import Family, build_family

__all__ = ["resolve_potential", "resolve_prior", "standardisation"]


def resolve_potential(potential_fn: object, prior: object | None) -> BasePotential:
    """Accept a :class:`BasePotential`, an sbi potential object or a plain function.

    An sbi potential object (anything callable with a ``set_x`` method, e.g. what sbi's
    ``likelihood_estimator_based_potential`` returns) is wrapped by
    :class:`~sbi_vi.potentials.SbiStylePotential`; a plain ``(theta, x_o) -> Tensor``
    function by :class:`~sbi_vi.potentials.CallablePotential`.
    """
    if isinstance(potential_fn, BasePotential):
        return potential_fn
    if is_sbi_style_potential(potential_fn):
        return SbiStylePotential(potential_fn)
    if callable(potential_fn):
        return CallablePotential(potential_fn, prior=prior)
    raise TypeError(
        "`potential_fn` must be a potential (e.g. from `likelihood_estimator_based_potential`) "
        f"or a callable (theta, x_o) -> log p(theta | x_o); got {type(potential_fn).__name__}."
    )


def resolve_prior(prior: object | None, potential: BasePotential) -> object:
    """The prior given, else the potential's; one of them must exist."""
    prior = prior if prior is not None else getattr(potential, "prior", None)
    if prior is None:
        raise ValueError(
            "`prior` is required: pass `prior=` (it defines the dimension of θ, its support "
            "and the initialisation of q) or use a potential that carries one."
        )
    prior = process_prior(prior)
    if potential.prior is None:
        potential.prior = prior
    return prior


def event_size_of(prior: object) -> int:
    """The dimension D of θ under ``prior``."""
    shape = getattr(prior, "event_shape", None)
    if shape is not None and len(shape) == 1:
        return int(shape[0])
    return int(prior.sample((1,)).shape[-1])


def standardisation(
    prior: object,
    transform: Transform,
    z_score_theta: ZScore,
    num_samples: int = 1000,
    samples: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Per-dimension location and scale of θ in unconstrained space.

    ``'independent'`` and ``'structured'`` use the mean and std of the transformed
    ``samples`` (default: ``num_samples`` prior draws; a variational family over θ is
    standardised per dimension, structure only matters for x), ``'none'`` uses 0 and 1.
    """
    check_choice("z_score_theta", z_score_theta, ("none", "independent", "structured"))
    if z_score_theta == "none":
        return None, None
    with torch.no_grad():
        theta = prior.sample((num_samples,)) if samples is None else samples
        u = transform(theta)
    u = u[torch.isfinite(u).all(-1)]
    if u.shape[0] < 2:
        u = transform(prior.sample((num_samples,)))
        u = u[torch.isfinite(u).all(-1)]
    shift = u.mean(0)
    scale = u.std(0).clamp(min=1e-6)
    return shift, scale


def make_family(
    q: str | object,
    *,
    prior: object,
    transform: Transform,
    z_score_theta: ZScore,
    num_transforms: int,
    hidden_features: int,
    direction: str,
    parameters: Iterable | None,
    modules: Iterable | None,
    device: str,
) -> Family:
    """Build the family for ``q`` over the prior's support."""
    shift, scale = standardisation(prior, transform, z_score_theta)
    if shift is not None:
        shift, scale = shift.to(device), scale.to(device)
    return build_family(
        q,  # type: ignore[arg-type]
        event_size=event_size_of(prior),
        link=transform.inv,
        shift=shift,
        scale=scale,
        num_transforms=num_transforms,
        hidden_features=hidden_features,
        direction=direction,
        parameters=parameters,
        modules=modules,
        device=device,
    )


def resolve_transform(prior: object, theta_transform: Transform | None) -> Transform:
    """The user's ``theta_transform`` or the prior's support map."""
    if theta_transform is None:
        return default_theta_transform(prior)
    if not isinstance(theta_transform, Transform):
        raise TypeError(
            "`theta_transform` must be a torch.distributions.transforms.Transform from the "
            f"prior's support to unconstrained space; got {type(theta_transform).__name__}."
        )
    return theta_transform


def warm_up(
    family: Family,
    prior: object,
    *,
    rounds: int,
    n_particles: int,
    learning_rate: float,
    clip_value: float,
) -> None:
    """Fit ``family`` to ``prior`` for ``rounds`` iterations, so training starts broad.

    A family arranged for fast densities (``direction == "density"``, the fKL flows) is fitted
    by maximum likelihood on fresh prior draws: one cheap network pass per step. Every other
    family is fitted by reverse KL, which needs only its one-pass sampling.
    """
    from sbi_vi.potentials.base import log_prior_or_zero
    from sbi_vi.vi.divergences import build_divergence
    from sbi_vi.vi.divergences.base import masked_mean
    from sbi_vi.vi.fit import fit, make_optimizer

    if getattr(family, "direction", "both") == "density" and hasattr(prior, "sample"):

        def closure() -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                theta = prior.sample((n_particles,))
            log_q = family().log_prob(theta)
            loss = -masked_mean(log_q, torch.isfinite(log_q.detach()))
            return loss, loss.detach()

    else:
        divergence = build_divergence("rKL")

        def closure() -> tuple[Tensor, Tensor]:
            out = divergence(family, lambda theta: log_prior_or_zero(prior, theta), n_particles)
            return out.loss, out.value

    optimizer, _ = make_optimizer(family.parameters(), learning_rate=learning_rate)
    fit(closure, optimizer, max_num_iters=rounds, clip_value=clip_value, show_progress_bar=False)
