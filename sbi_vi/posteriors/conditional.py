"""The amortised q(θ | x): an engine family with a context, and its shape rules.

The conditional q is the same lazy family as for one observation (:mod:`sbi_vi.vi.families`)
built with ``context_size = L``; :class:`ConditionalQ` only z-scores x before handing it over
as the context. :class:`AtObservation` freezes the context at one x, which turns the
amortised q into an unconditional family that single-observation training can refine.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution
from torch.distributions.transforms import Transform

from sbi_vi.estimators.zscore import Standardize, ZScore
from sbi_vi.posteriors.setup import event_size_of, standardisation
from sbi_vi.vi.families import FAMILY_NAMES, Family, build_family

__all__ = ["AtObservation", "ConditionalQ", "broadcast_theta_x", "build_conditional_q"]


class ConditionalQ(nn.Module):
    """q(θ | x) = ``family(standardize(x))``, a distribution with batch shape ``x.shape[:-1]``.

    Args:
        family: A family built with ``context_size`` equal to the size ``L`` of x.
        standardize: The z-scoring of x (its statistics are buffers, saved with q).
    """

    def __init__(self, family: Family, standardize: nn.Module):
        super().__init__()
        self.family = family
        self.standardize = standardize

    @property
    def event_size(self) -> int:
        """The dimension ``D`` of θ."""
        return self.family.event_size

    @property
    def direction(self) -> str:
        """Which pass of the family is one network pass (``"sample"`` or ``"density"``)."""
        return getattr(self.family, "direction", "both")

    def forward(self, x: Tensor) -> Distribution:
        """q(θ | x) for x of shape ``[*B, L]``: batch shape ``[*B]``, event shape ``[D]``."""
        return self.family(self.standardize(x))


class AtObservation(Family):
    """The amortised q at one fixed observation: ``forward()`` returns q(θ | x_o).

    Its parameters are those of the (copied) conditional q, so training it by
    single-observation VI fine-tunes the amortised network for x_o alone.

    Args:
        conditional: The amortised q (used as is: pass a copy to keep the original).
        x_o: The observation, shape ``[L]``.
    """

    def __init__(self, conditional: ConditionalQ, x_o: Tensor):
        super().__init__(conditional.event_size, conditional.family.link)
        if x_o.ndim != 1:
            raise ValueError(f"`x_o` must have shape [L]; got {tuple(x_o.shape)}.")
        self.conditional = conditional
        self.direction = conditional.direction
        self.register_buffer("x_o", x_o.detach().clone())

    def base(self, context: Tensor | None = None) -> Distribution:
        cond = self.conditional
        return cond.family.base(cond.standardize(self.x_o))

    def forward(self, context: Tensor | None = None) -> Distribution:
        return self.conditional(self.x_o)


def build_conditional_q(
    q: str,
    *,
    prior: object,
    transform: Transform,
    theta: Tensor,
    x: Tensor,
    num_transforms: int,
    hidden_features: int,
    z_score_theta: ZScore,
    z_score_x: ZScore,
    direction: str,
    device: str,
) -> ConditionalQ:
    """Build q(θ | x) over the prior's support, standardised with training pairs.

    θ is standardised in unconstrained space with the statistics of ``transform(theta)``
    (the simulated parameters, i.e. the prior or proposal draws), x with those of ``x``.

    Raises:
        ValueError: If ``q`` is not a family name.
    """
    if not isinstance(q, str) or q not in FAMILY_NAMES:
        raise ValueError(
            f"`flow_type` must be one of {', '.join(map(repr, FAMILY_NAMES))}; got {q!r}. "
            "Amortised VI builds its conditional family by name (custom distributions are "
            "for single-observation `train`)."
        )
    shift, scale = standardisation(prior, transform, z_score_theta, samples=theta)
    family = build_family(
        q,
        event_size=event_size_of(prior),
        link=transform.inv,
        shift=shift,
        scale=scale,
        context_size=x.shape[-1],
        num_transforms=num_transforms,
        hidden_features=hidden_features,
        direction=direction,
        device=device,
    )
    return ConditionalQ(family, Standardize(x, z_score_x)).to(device)


def broadcast_theta_x(theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Pair θ ``[N, D]`` with x ``[B, L]`` by the rules of ``VIPosterior.log_prob``.

    One x serves every θ, one θ is evaluated under every x, equal counts are paired.

    Raises:
        ValueError: If ``N`` and ``B`` differ and neither is 1.
    """
    n, b = theta.shape[0], x.shape[0]
    if n == b:
        return theta, x
    if b == 1:
        return theta, x.expand(n, x.shape[-1])
    if n == 1:
        return theta.expand(b, theta.shape[-1]), x
    raise ValueError(
        f"`theta` has {n} rows and `x` has {b}: they must be equal (paired), or one of them "
        "must be a single row (broadcast)."
    )


def sample_conditional(
    q: ConditionalQ, sample_shape: Size, x: Tensor, max_batch_size: int
) -> Tensor:
    """Draw θ of shape ``[*sample_shape, B, D]`` from q(θ | x) for x ``[B, L]``.

    At most about ``max_batch_size`` draws go through the network at once: rows of x are
    taken a few at a time and, if one row needs more, its draws are split too.
    """
    num = sample_shape.numel()
    rows = max(1, max_batch_size // max(num, 1))
    per_pass = max(1, max_batch_size // rows) if num > max_batch_size else max(num, 1)
    parts = []
    with torch.no_grad():
        for i in range(0, x.shape[0], rows):
            q_rows = q(x[i : i + rows])
            draws = [
                q_rows.sample((min(per_pass, num - j),)) for j in range(0, max(num, 1), per_pass)
            ]
            parts.append(torch.cat(draws)[:num])
    theta = torch.cat(parts, dim=1)  # [num, B, D]
    return theta.reshape(*sample_shape, *theta.shape[1:])
