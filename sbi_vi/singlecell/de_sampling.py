r"""Draws of normalised expression ρ for the cells of one DE group.

Both samplers target the group's *aggregate posterior* ``(1/N) Σ_n p(ρ | x_n)``: every cell
gets the same share of the ``n`` draws (``⌊n/N⌋`` or one more, the extra draws to random
cells; with ``N > n`` cells, ``n`` distinct random cells get one draw each), and the rows
are shuffled so that row-wise pairing with the other group meets random pairs of cells.
scvi-tools draws ``⌊n/N⌋ + 1`` per cell and resamples ``n`` rows, which gives each cell the
same share up to multinomial noise.

- :func:`uniform_draws`: each draw is ``z ~ q(z | x_n)`` of the encoder, decoded.
- :func:`importance_draws` (``weights="importance"``): each cell gets ``S`` encoder draws with
  log weights ``log p(x_n, z, ℓ) − log q(z, ℓ | x_n)``, normalised per cell with PSIS (the
  engine's :func:`~sbi_vi.diagnostics.psis`), and its share of draws is resampled from
  them: the draws target the cell's exact posterior ``p(z, ℓ | x_n)`` instead of the
  encoder's approximation, with the same mass for every cell. PSIS's k̂ tells per cell how
  far that can be trusted. scvi-tools instead weights every draw against the mixture of the
  group's encoders and needs a marginal-likelihood estimate of each anchor cell; the
  per-cell weights need neither, and their self-normalisation per cell keeps the cells'
  equal shares exact.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_vi.diagnostics.psis import MAX_KHAT, psis
from sbi_vi.singlecell.de_settings import ImportanceSettings

__all__ = ["GroupDraws", "draws_per_cell", "importance_draws", "uniform_draws"]

logger = logging.getLogger(__name__)

_ELEMENTS_PER_PASS = 2**22  # draws × cells × genes decoded in one pass


@dataclass(frozen=True)
class GroupDraws:
    """Draws of one group.

    Attributes:
        scales: Normalised expression, ``[M, G]``, rows in random order within each batch.
        codes: Batch code each row was decoded in, ``[M]`` (``-1``: the cell's own batch).
        khat: PSIS k̂ of every weighted cell, ``[N]`` (``None`` for uniform draws).
    """

    scales: np.ndarray
    codes: np.ndarray
    khat: np.ndarray | None = None


def draws_per_cell(n_cells: int, n_draws: int) -> np.ndarray:
    """Equal shares of ``n_draws`` over ``n_cells`` cells (the remainder to random cells).

    Example:
        >>> counts = draws_per_cell(4, 10)
        >>> int(counts.sum()), sorted(counts.tolist())
        (10, [2, 2, 3, 3])
    """
    base, extra = divmod(n_draws, n_cells)
    counts = np.full(n_cells, base, dtype=np.int64)
    counts[torch.randperm(n_cells)[:extra].numpy()] += 1
    return counts


def _decode_scale(model: Any, cells: Any, u: Tensor, code: int | None) -> Tensor:
    """ρ of latent draws ``u`` ``[k, B, D]`` decoded in batch ``code`` (``None``: own)."""
    module = model.module
    z, log_library = module.split(u, cells)
    codes = None if code is None else torch.full_like(cells.batch_index, code)
    return module.generative(z, log_library, cells, transform_batch=codes).scale


def _rows(
    model: Any,
    cells: Any,
    draw: Callable[[int, int], Tensor],
    counts: np.ndarray,
    code: int | None,
) -> Tensor:
    """``counts[b]`` decoded draws of each cell ``b``, ``[Σ counts, G]``.

    ``draw(start, size)`` gives the latent draws ``start .. start + size`` of every cell,
    ``[size, B, D]``; they are decoded in chunks that bound the memory of one pass.
    """
    k, n_cells = int(counts.max()), len(counts)
    chunk = max(1, _ELEMENTS_PER_PASS // (n_cells * model.setup.n_vars))
    wanted = torch.as_tensor(counts)[None, :]
    rows = []
    for start in range(0, k, chunk):
        size = min(chunk, k - start)
        scale = _decode_scale(model, cells, draw(start, size), code)
        keep = (torch.arange(start, start + size)[:, None] < wanted).to(scale.device)
        rows.append(scale[keep].float().cpu())
    return torch.cat(rows)


def _assemble(blocks: list[list[Tensor]], codes: list[int | None], khat: Any) -> GroupDraws:
    scales, labels = [], []
    for code, parts in zip(codes, blocks, strict=True):
        rows = torch.cat(parts)
        scales.append(rows[torch.randperm(rows.shape[0])])
        labels.append(np.full(rows.shape[0], -1 if code is None else code))
    return GroupDraws(torch.cat(scales).numpy(), np.concatenate(labels), khat)


def _cells_per_pass(model: Any, draws: int, batch_size: int) -> int:
    return max(1, min(batch_size, _ELEMENTS_PER_PASS // max(1, draws * model.setup.n_vars)))


@torch.no_grad()
def uniform_draws(
    model: Any, adata: Any, idx: np.ndarray, codes: list[int | None], n_draws: int, batch_size: int
) -> GroupDraws:
    """``max(2, n_draws // len(codes))`` encoder draws per batch code, equal shares per cell.

    Args:
        model: A trained single-cell model (``module``, ``_minibatches``).
        adata: The AnnData of the cells.
        idx: Cell positions of the group, ``[N]``.
        codes: Batch codes to decode in (``None``: each cell's own batch).
        n_draws: Draws of the group.
        batch_size: Cells per forward pass at most.
    """
    model.module.eval()
    per_code = max(2, n_draws // len(codes))
    blocks: list[list[Tensor]] = []
    for code in codes:
        counts = draws_per_cell(len(idx), per_code)
        cells_idx, counts = idx[counts > 0], counts[counts > 0]
        step = _cells_per_pass(model, int(counts.max()), batch_size)
        parts, start = [], 0
        for cells in model._minibatches(adata, cells_idx, step):
            c = counts[start : start + cells.x.shape[0]]
            start += len(c)
            q = model.module.q(cells)
            parts.append(_rows(model, cells, lambda _, size, q=q: q.sample((size,)), c, code))
        blocks.append(parts)
    return _assemble(blocks, codes, None)


def _log_weights(module: Any, cells: Any, q: Any, u: Tensor) -> Tensor:
    """``log p(x, z, ℓ) − log q(z, ℓ | x)`` of draws ``u`` ``[k, B, D]``: ``[k, B]``."""
    z, log_library = module.split(u, cells)
    px = module.generative(z, log_library, cells)
    return px.log_prob_sum(cells.x) + module.log_prior(u, cells) - q.log_prob(u)


def normalised_weights(log_w: Tensor, *, truncation: bool) -> tuple[Tensor, np.ndarray]:
    """Per-column normalised importance weights of ``log_w`` ``[S, B]`` and their k̂ ``[B]``.

    PSIS-smoothed weights, or (``truncation``) Ionides' truncation of the raw weights at
    ``mean · √S``; k̂ is PSIS's in both cases.

    Example:
        >>> w, khat = normalised_weights(torch.zeros(100, 3), truncation=False)
        >>> bool(torch.allclose(w, torch.full((100, 3), 0.01))), khat.shape
        (True, (3,))
    """
    result = psis(log_w.double())
    khat = np.asarray(result.khat, dtype=np.float64).reshape(-1)
    if not truncation:
        return result.log_weights.exp().float(), khat
    log_w = log_w.double() - log_w.double().max(0).values
    w = log_w.exp()
    cap = w.mean(0) * np.sqrt(log_w.shape[0])
    w = torch.minimum(w, cap)
    return (w / w.sum(0)).float(), khat


@torch.no_grad()
def _weighted_latents(
    model: Any, adata: Any, idx: np.ndarray, settings: ImportanceSettings, batch_size: int
) -> tuple[Tensor, Tensor, np.ndarray]:
    """``S`` encoder draws per cell ``[S, N, D]``, their normalised weights ``[S, N]``, k̂."""
    module = model.module
    module.eval()
    per_pass = min(settings.n_mc_samples, settings.n_mc_samples_per_pass)
    us, ws, khats = [], [], []
    for cells in model._minibatches(adata, idx, _cells_per_pass(model, per_pass, batch_size)):
        q = module.q(cells)
        u_parts, lw_parts, done = [], [], 0
        while done < settings.n_mc_samples:
            size = min(per_pass, settings.n_mc_samples - done)
            u = q.sample((size,))
            u_parts.append(u)
            lw_parts.append(_log_weights(module, cells, q, u))
            done += size
        w, khat = normalised_weights(torch.cat(lw_parts), truncation=settings.truncation)
        us.append(torch.cat(u_parts).cpu())
        ws.append(w.cpu())
        khats.append(khat)
    return torch.cat(us, 1), torch.cat(ws, 1), np.concatenate(khats)


def _reliable_cells(khat: np.ndarray, settings: ImportanceSettings, group: str) -> np.ndarray:
    """The cells kept after the k̂ filter (a warning says how many are unreliable)."""
    n_bad = int((khat > MAX_KHAT).sum())
    if settings.khat_threshold is None:
        if n_bad:
            warnings.warn(
                f"Importance weighting of {group}: PSIS k̂ > {MAX_KHAT} for {n_bad} of "
                f"{khat.size} cells (median k̂ {np.median(khat):.2f}); their reweighted draws "
                "are unreliable. Raise `importance_weighting_kwargs['n_mc_samples']`, or set "
                "`importance_weighting_kwargs['khat_threshold']` to drop such cells.",
                stacklevel=6,  # the caller of differential_expression
            )
        return np.ones(khat.size, dtype=bool)
    keep = khat <= settings.khat_threshold
    if not keep.any():
        raise ValueError(
            f"Importance weighting of {group}: every one of its {khat.size} cells has PSIS "
            f"k̂ above `khat_threshold`={settings.khat_threshold} (smallest k̂ "
            f"{khat.min():.2f}); raise `n_mc_samples` or `khat_threshold`, or pass "
            "`khat_threshold=None`."
        )
    if not keep.all():
        warnings.warn(
            f"Importance weighting of {group}: {int((~keep).sum())} of {khat.size} cells have "
            f"PSIS k̂ > {settings.khat_threshold} and are left out.",
            stacklevel=6,  # the caller of differential_expression
        )
    return keep


@torch.no_grad()
def importance_draws(
    model: Any,
    adata: Any,
    idx: np.ndarray,
    codes: list[int | None],
    n_draws: int,
    batch_size: int,
    settings: ImportanceSettings,
    group: str,
) -> GroupDraws:
    """Draws resampled from each cell's importance-weighted encoder draws (see the module).

    Args:
        model: A trained single-cell model.
        adata: The AnnData of the cells.
        idx: Cell positions of the group, ``[N]``.
        codes: Batch codes to decode in (``None``: each cell's own batch). The weights are
            those of the cell's posterior given its observed batch; only decoding changes.
        n_draws: Draws of the group.
        batch_size: Cells per forward pass at most.
        settings: The importance-weighting settings.
        group: The group's name, for messages.

    Raises:
        ValueError: ``settings.khat_threshold`` leaves no cell.
    """
    if len(idx) > settings.max_cells:
        idx = np.sort(idx[torch.randperm(len(idx))[: settings.max_cells].numpy()])
    u_all, w_all, khat = _weighted_latents(model, adata, idx, settings, batch_size)
    keep = _reliable_cells(khat, settings, group)
    idx, u_all, w_all = idx[keep], u_all[:, keep], w_all[:, keep]
    logger.info("importance weighting of %s: median PSIS k-hat %.2f", group, np.median(khat))
    per_code = max(2, n_draws // len(codes))
    blocks: list[list[Tensor]] = []
    for code in codes:
        counts = draws_per_cell(len(idx), per_code)
        k = int(counts.max())
        picks = torch.multinomial(w_all.T, k, replacement=True)  # [N, k]
        chosen = u_all[picks.T, torch.arange(len(idx))[None, :]]  # [k, N, D]
        step = _cells_per_pass(model, k, batch_size)
        parts, start = [], 0
        for cells in model._minibatches(adata, idx, step):
            stop = start + cells.x.shape[0]
            u = chosen[:, start:stop].to(model.device)
            parts.append(
                _rows(model, cells, lambda i, n, u=u: u[i : i + n], counts[start:stop], code)
            )
            start = stop
        blocks.append(parts)
    return _assemble(blocks, codes, khat)
