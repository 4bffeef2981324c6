"""A 2-D picture of a latent space: t-SNE (scikit-learn) or UMAP, coloured by a label."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pandas as pd

from sbi_vi.singlecell.metrics import _choice, _int, _matrix

__all__ = ["embedding_plot"]

_EMBEDDINGS = ("tsne", "umap")


# -- pictures --------------------------------------------------------------------------


def embedding_plot(
    latent: Any,
    color: Any = None,
    method: Literal["tsne", "umap"] = "tsne",
    n_samples: int | None = 1000,
    seed: int | None = 0,
    ax: Any = None,
    title: str | None = None,
    save_path: str | os.PathLike | None = None,
    method_kwargs: dict[str, Any] | None = None,
    return_indices: bool = False,
) -> tuple[np.ndarray, Any] | tuple[np.ndarray, np.ndarray, Any]:
    """A 2-D t-SNE (or UMAP) picture of the latent space, coloured by a label (``show_t_sne``).

    At most ``n_samples`` cells are drawn at random (without replacement; kept in their
    order) and embedded with scikit-learn's ``TSNE`` (``perplexity = min(30, (m − 1) / 3)``
    for ``m`` cells, ``random_state=seed``) or ``umap.UMAP`` (needs ``umap-learn``). A
    latent space that is already 2-D is drawn as is (as classic scVI). The figure is made
    without pyplot (``matplotlib.figure.Figure``), so it is safe with any backend and never
    shown; it displays when returned in a notebook.

    Args:
        latent: Cell coordinates, shape ``[n_cells, n_dims]``.
        color: Label of each cell, ``[n_cells]``: categories get one colour each and a
            legend; floats with more than 20 distinct values get a colour bar.
        method: ``"tsne"`` or ``"umap"``.
        n_samples: Cells to draw (``None``: all).
        seed: Seed of the subsample and the embedding.
        ax: Matplotlib axes to draw into (default: a new figure).
        title: Title of the axes.
        save_path: Save the figure to this file.
        method_kwargs: Options of ``TSNE`` / ``UMAP`` overriding the defaults.
        return_indices: Also return the positions of the drawn cells.

    Returns:
        ``(embedding, figure)``: the coordinates ``[m, 2]`` of the drawn cells and the
        figure; ``(embedding, indices, figure)`` with ``return_indices``.

    Raises:
        ValueError: Unknown ``method``, ``color`` of the wrong length, bad ``n_samples``.
        ImportError: ``method="umap"`` without the ``umap-learn`` package.

    Example:
        >>> latent = np.random.default_rng(0).normal(size=(40, 5))
        >>> embedding, figure = embedding_plot(
        ...     latent, color=["a", "b"] * 20, n_samples=30, method_kwargs={"method": "exact"}
        ... )  # the exact t-SNE gradient: fast for a few cells
        >>> embedding.shape, type(figure).__name__
        ((30, 2), 'Figure')
    """
    method = _choice("method", method, _EMBEDDINGS)
    latent = _matrix("latent", latent)
    n_cells = latent.shape[0]
    if color is not None:
        if np.ndim(color) != 1:
            raise ValueError(f"`color` must be 1-D (one label per cell), got {np.shape(color)}.")
        color = (color if isinstance(color, pd.Series) else pd.Series(color)).reset_index(
            drop=True
        )
        if len(color) != n_cells:
            raise ValueError(
                f"`color` has {len(color)} values but `latent` has {n_cells} cells; they must "
                "match."
            )
    if method == "umap" and latent.shape[1] != 2:
        try:
            import umap
        except ImportError:
            raise ImportError(
                "`method='umap'` needs the `umap-learn` package (pip install umap-learn); "
                "or use method='tsne'."
            ) from None
    rng = np.random.default_rng(seed)
    n_draw = n_cells if n_samples is None else _int("n_samples", n_samples, 2)
    if n_draw < n_cells:
        indices = np.sort(rng.choice(n_cells, n_draw, replace=False))
    else:
        indices = np.arange(n_cells)
    points = latent[indices]
    options = dict(method_kwargs or {})
    if points.shape[1] == 2:
        embedding = points.copy()
        axis_name = "latent"
    elif method == "tsne":
        from sklearn.manifold import TSNE

        options.setdefault("perplexity", min(30.0, (len(points) - 1) / 3.0))
        options.setdefault("random_state", seed)
        embedding = TSNE(n_components=2, **options).fit_transform(points)
        axis_name = "t-SNE"
    else:
        options.setdefault("n_neighbors", min(15, len(points) - 1))
        options.setdefault("random_state", seed)
        embedding = umap.UMAP(n_components=2, **options).fit_transform(points)
        axis_name = "UMAP"
    embedding = np.asarray(embedding, dtype=np.float64)
    figure = _draw_embedding(embedding, None if color is None else color.iloc[indices], ax)
    ax = figure.axes[0] if ax is None else ax
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    if title is not None:
        ax.set_title(title)
    if save_path is not None:
        figure.savefig(save_path, bbox_inches="tight", dpi=150)
    if return_indices:
        return embedding, indices, figure
    return embedding, figure


def _draw_embedding(embedding: np.ndarray, color: pd.Series | None, ax: Any) -> Any:
    import matplotlib
    from matplotlib.figure import Figure

    if ax is None:
        figure = Figure(figsize=(7.0, 6.0))
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    size = max(2.0, min(20.0, 4000.0 / len(embedding)))
    x, y = embedding[:, 0], embedding[:, 1]
    if color is None:
        ax.scatter(x, y, s=size, linewidths=0)
    elif color.dtype.kind == "f" and color.nunique() > 20:
        points = ax.scatter(x, y, c=color.to_numpy(), s=size, linewidths=0, cmap="viridis")
        figure.colorbar(points, ax=ax, label=str(color.name) if color.name is not None else None)
    else:
        categories = color.astype("category")
        names = list(categories.cat.categories)
        cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
        colors = (
            [cmap(i % cmap.N) for i in range(len(names))]
            if len(names) <= 20
            else matplotlib.colormaps["turbo"](np.linspace(0, 1, len(names)))
        )
        codes = categories.cat.codes.to_numpy()
        for code, (name, tone) in enumerate(zip(names, colors)):
            keep = codes == code
            if keep.any():
                ax.scatter(x[keep], y[keep], s=size, linewidths=0, color=tone, label=str(name))
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            markerscale=max(1.0, 6.0 / size),
            fontsize="small",
            ncol=1 if len(names) <= 20 else 2,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    return figure
