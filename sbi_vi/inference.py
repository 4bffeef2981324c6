"""One call from a simulator and a prior to a trained variational posterior.

:func:`infer` composes the parts a user would otherwise wire by hand — :func:`simulate`,
an estimator (:class:`~sbi_vi.estimators.NLE` or :class:`~sbi_vi.estimators.NRE`),
``build_posterior`` and :meth:`VIPosterior.train <sbi_vi.posteriors.VIPosterior.train>` —
for one observation ``x_o``, in one or several rounds.

With ``num_rounds > 1`` it runs *sequential* neural variational inference (SNVI): round 1
simulates from the prior; round r draws its parameters from the posterior of round r − 1
trained on ``x_o``, so the simulation budget concentrates where the posterior of ``x_o``
puts its mass. Both estimators stay valid under such proposals without a correction: NLE
learns p(x | θ), whatever distribution the θ came from, and the ratio NRE learns,
p(x | θ) / p̃(x) with p̃ the marginal of x under the proposal, differs from the likelihood
only by a factor that is constant in θ. Each round's q starts from the previous round's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from sbi_vi._checks import as_tensor, check_choice, check_positive_int, seeded

__all__ = ["infer"]

logger = logging.getLogger(__name__)

Method = Literal["NLE", "NRE"]


def infer(
    simulator: Callable[[Tensor], Any],
    prior: object,
    x_o: Tensor,
    method: Method = "NLE",
    num_simulations: int = 1000,
    *,
    num_rounds: int = 1,
    estimator: str | Callable | None = None,
    estimator_kwargs: Mapping[str, Any] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    vi_parameters: Mapping[str, Any] | None = None,
    vi_train_kwargs: Mapping[str, Any] | None = None,
    num_workers: int = 1,
    simulation_batch_size: int | None = None,
    seed: int | None = None,
    show_progress_bar: bool = True,
) -> Any:
    r"""Simulate, train an estimator and fit a variational posterior for ``x_o``.

    Args:
        simulator: ``theta [B, D] -> x [B, L]`` (or one θ at a time, see :func:`simulate`).
        prior: The prior over θ, a torch ``Distribution`` with event shape ``[D]``.
        x_o: The observation, shape ``[L]`` (or ``[N, L]`` iid rows).
        method: ``"NLE"`` (neural likelihood, a conditional flow) or ``"NRE"`` (neural
            ratio, a classifier with the contrastive NRE-C loss).
        num_simulations: Total simulation budget, split evenly over the rounds.
        num_rounds: Rounds of simulation and training; more than one runs SNVI.
        estimator: The network: ``density_estimator`` of NLE (``"maf"``, ``"nsf"`` or a
            builder) or ``classifier`` of NRE (``"resnet"``, ``"mlp"``, ``"linear"`` or a
            builder). Default: the estimator's own default.
        estimator_kwargs: Further constructor arguments of the estimator.
        train_kwargs: Arguments of the estimator's ``train`` (e.g. ``training_batch_size``).
        vi_parameters: Arguments of :class:`~sbi_vi.posteriors.VIPosterior` (e.g.
            ``{"q": "nsf", "vi_method": "fKL"}``).
        vi_train_kwargs: Arguments of :meth:`VIPosterior.train
            <sbi_vi.posteriors.VIPosterior.train>`.
        num_workers: Parallel simulation workers (joblib).
        simulation_batch_size: θ per simulator call (see :func:`simulate`).
        seed: Seed of the simulations and of the training (the caller's random state is
            left as it was); the same seed gives the same posterior. ``None`` draws one from
            torch's global generator.
        show_progress_bar: Show tqdm bars.

    Returns:
        The :class:`~sbi_vi.posteriors.VIPosterior` of the last round, trained on ``x_o``
        (its default x).

    Raises:
        ValueError: On invalid arguments (named in the message).

    Example:
        >>> import torch
        >>> from sbi_vi import BoxUniform
        >>> prior = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
        >>> def simulator(theta):
        ...     return theta + 0.1 * torch.randn_like(theta)
        >>> posterior = infer(
        ...     simulator, prior, torch.zeros(2), num_simulations=500, seed=0,
        ...     train_kwargs={"max_num_epochs": 5}, vi_parameters={"q": "gaussian"},
        ...     vi_train_kwargs={"max_num_iters": 50, "quality_control": False},
        ...     show_progress_bar=False)
        >>> posterior.sample((10,)).shape
        torch.Size([10, 2])
    """
    from sbi_vi.estimators import NLE, NRE

    check_choice("method", method, ("NLE", "NRE"))
    num_simulations = check_positive_int("num_simulations", num_simulations)
    num_rounds = check_positive_int("num_rounds", num_rounds)
    if num_simulations < num_rounds:
        raise ValueError(
            f"`num_simulations` ({num_simulations}) must be at least `num_rounds` "
            f"({num_rounds}): every round needs simulations."
        )
    x_o = as_tensor("x_o", x_o)
    estimator_kwargs = dict(estimator_kwargs or {})
    if estimator is not None:
        estimator_kwargs["density_estimator" if method == "NLE" else "classifier"] = estimator
    estimator_cls = NLE if method == "NLE" else NRE
    trainer = estimator_cls(prior, show_progress_bars=show_progress_bar, **estimator_kwargs)
    base_seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    sizes = [
        num_simulations // num_rounds + (r < num_simulations % num_rounds)
        for r in range(num_rounds)
    ]

    with seeded(base_seed):  # without touching the caller's RNG
        return _run_rounds(
            simulator,
            prior,
            x_o,
            trainer,
            sizes,
            base_seed,
            num_workers,
            simulation_batch_size,
            train_kwargs,
            vi_parameters,
            vi_train_kwargs,
            show_progress_bar,
        )


def _run_rounds(
    simulator: Callable[[Tensor], Any],
    prior: object,
    x_o: Tensor,
    trainer: Any,
    sizes: list[int],
    base_seed: int,
    num_workers: int,
    simulation_batch_size: int | None,
    train_kwargs: Mapping[str, Any] | None,
    vi_parameters: Mapping[str, Any] | None,
    vi_train_kwargs: Mapping[str, Any] | None,
    show_progress_bar: bool,
) -> Any:
    """Simulate from the prior, then from each round's posterior; train; fit q on x_o."""
    from sbi_vi.simulate import simulate

    proposal: object = prior
    posterior = None
    for r, size in enumerate(sizes):
        theta, x = simulate(
            simulator,
            proposal,
            size,
            num_workers=num_workers,
            simulation_batch_size=simulation_batch_size,
            seed=base_seed + r,
            show_progress_bar=show_progress_bar,
        )
        trainer.append_simulations(theta, x)
        trainer.train(**{"seed": base_seed + r, **dict(train_kwargs or {})})
        params = dict(vi_parameters or {})
        if posterior is not None:
            params["q"] = posterior  # start from the previous round's q
        vi_method = params.pop("vi_method", "rKL")
        posterior = trainer.build_posterior(vi_method=vi_method, vi_parameters=params)
        posterior.set_default_x(x_o)
        posterior.train(
            **{"show_progress_bar": show_progress_bar, "seed": base_seed + r}
            | dict(vi_train_kwargs or {})
        )
        logger.info("Round %d of %d: %d simulations.", r + 1, len(sizes), theta.shape[0])
        proposal = posterior
    return posterior
