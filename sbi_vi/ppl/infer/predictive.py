"""``Predictive``: prior and posterior predictive draws, vectorised over samples."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from sbi_vi._checks import check_positive_int
from sbi_vi.ppl.handlers import seed as seed_handler
from sbi_vi.ppl.handlers import substitute, trace
from sbi_vi.ppl.infer.autoguides.base import AutoGuide
from sbi_vi.ppl.infer.runner import ModelRunner, particle_plate
from sbi_vi.ppl.infer.sites import inspect_model, natural_shape
from sbi_vi.ppl.params import ParamStore
from sbi_vi.ppl.particles import guess_max_plate_nesting, vectorize_particles

__all__ = ["Predictive"]


class Predictive:
    """Draws of a model's sites: prior predictive, or posterior predictive given a guide.

    NumPyro's ``Predictive``. Without ``guide`` and ``posterior_samples`` the latent sites
    are drawn from the prior; with a guide (fitted autoguide or guide function) or with
    ``posterior_samples`` they are set from those, and the observed sites are drawn anew
    from the likelihood. All ``num_samples`` draws come from one vectorised run; every
    plate runs at its full size (subsampling is for training).

    Args:
        model: The model.
        posterior_samples: Draws of latent sites, ``{site: [num_samples, *shape]}``.
        guide: A guide to draw the latent sites from (an autoguide or a guide function).
        params: Values of ``param`` sites by name (e.g. ``svi_result.params``) or a
            ``ParamStore``; other parameters take their initial values. With a fitted
            autoguide and no ``params``, the store it was trained with.
        num_samples: Number of draws (default: the length of ``posterior_samples``).
        return_sites: Sites to return. Default: every sample and deterministic site for
            the prior predictive; the sites not set by the guide or the samples (observed
            and deterministic ones) otherwise.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from sbi_vi.ppl import plate, sample
        >>> def model(n):
        ...     mu = sample("mu", Normal(0.0, 1.0))
        ...     with plate("data", n):
        ...         sample("x", Normal(mu, 1.0), obs=torch.zeros(n))
        >>> draws = Predictive(model, num_samples=100)(5, seed=0)
        >>> {k: tuple(v.shape) for k, v in draws.items()}
        {'mu': (100,), 'x': (100, 5)}
    """

    def __init__(
        self,
        model: Callable[..., Any],
        posterior_samples: Mapping[str, Tensor] | None = None,
        *,
        guide: Callable[..., Any] | None = None,
        params: Mapping[str, Tensor] | ParamStore | None = None,
        num_samples: int | None = None,
        return_sites: Sequence[str] | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"`model` must be callable, got {type(model).__name__}.")
        if guide is not None and posterior_samples is not None:
            raise ValueError("pass either `guide` or `posterior_samples`, not both.")
        if guide is not None and not callable(guide):
            raise TypeError(f"`guide` must be callable, got {type(guide).__name__}.")
        if posterior_samples is not None:
            lengths = {int(torch.as_tensor(v).shape[0]) for v in posterior_samples.values()}
            if len(lengths) > 1:
                raise ValueError(
                    f"`posterior_samples` must all have the same number of draws, got {lengths}."
                )
            n = lengths.pop() if lengths else None
            if num_samples is not None and n is not None and num_samples != n:
                raise ValueError(
                    f"`num_samples` ({num_samples}) differs from the {n} posterior samples."
                )
            num_samples = n if num_samples is None else num_samples
        if num_samples is None:
            raise ValueError("pass `num_samples` (or `posterior_samples`).")
        self.num_samples = check_positive_int("num_samples", num_samples)
        if isinstance(return_sites, str):
            raise TypeError(f"`return_sites` takes a list of names, e.g. [{return_sites!r}].")
        self.model = model
        self.guide = guide
        self.posterior_samples = posterior_samples
        self.return_sites = None if return_sites is None else list(return_sites)
        if params is None and isinstance(guide, AutoGuide) and guide.store is not None:
            self.store, self.params = guide.store, None  # the store SVI trained with the guide
        elif isinstance(params, ParamStore):
            self.store, self.params = params, None
        elif params is None or isinstance(params, Mapping):
            self.store, self.params = ParamStore(), params
        else:
            raise TypeError(f"`params` must be a dict or a ParamStore, got {type(params)}.")

    def _with_params(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if not self.params:
            return fn
        return substitute(fn, data=dict(self.params))

    def __call__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """Draw ``num_samples`` times on the model's arguments.

        Returns:
            ``{site: [num_samples, *shape]}`` in each site's plain shape.
        """
        context = contextlib.nullcontext() if seed is None else seed_handler(rng_seed=seed)
        with context, torch.no_grad():
            return self._draw(args, kwargs)

    def _draw(self, args: tuple, kwargs: dict) -> dict[str, Tensor]:
        model = self._with_params(self.model)
        info = inspect_model(model, args, kwargs, store=self.store)
        k, n = info.max_plate_nesting, self.num_samples
        indices = info.full_indices()
        values: dict[str, Tensor] = {}
        guide = self.guide
        if isinstance(guide, AutoGuide):
            guide.setup(*args, store=self.store, **kwargs)
            values = dict(guide.draw(n, indices).values)
        elif guide is not None:
            guide = self._with_params(guide)
            runner = ModelRunner(indices=indices, store=self.store, log_joint=False)
            k = max(k, guess_max_plate_nesting(guide, *args, **kwargs))
            with trace() as gt, runner:
                vectorize_particles(guide, n, max_plate_nesting=k)(*args, **kwargs)
            values = {
                s: m.value for s, m in gt.items() if m.type == "sample" and not m.is_observed
            }
        elif self.posterior_samples is not None:
            for name, value in self.posterior_samples.items():
                site = info.latent.get(name)
                if site is None:
                    raise ValueError(
                        f"posterior sample site {name!r} is not a latent site of the model; "
                        f"its latent sites: {list(info.latent)}."
                    )
                value = torch.as_tensor(value, dtype=torch.get_default_dtype())
                if value.numel() != n * math.prod(site.shape):
                    raise ValueError(
                        f"posterior samples of {name!r} have shape {tuple(value.shape)}; "
                        f"expected ({n}, *{site.natural_shape})."
                    )
                values[name] = value.reshape(n, *site.shape)
        runner = ModelRunner(
            values=values,
            indices=indices,
            store=self.store,
            max_plate_nesting=k,
            log_joint=False,
            uncondition=True,
        )
        with trace() as tr, particle_plate(n, k), runner:
            model(*args, **kwargs)
        sites = self.return_sites
        if sites is None:
            sites = [
                s
                for s, m in tr.items()
                if m.type in ("sample", "deterministic")
                and s not in values
                and not m.infer.get("is_auxiliary", False)
            ]
        out = {}
        for s in sites:
            msg = tr.get(s)
            if msg is None or msg.type not in ("sample", "deterministic"):
                raise ValueError(f"`return_sites`: the model has no sample site {s!r}.")
            value = msg.value
            if value.dim() >= k + 1:
                frames = info.site_frames.get(s, ())
                shape = natural_shape(tuple(value.shape[1:]), frames, k)
                if math.prod(shape) * n == value.numel():
                    value = value.reshape(n, *shape)
            out[s] = value
        return out
