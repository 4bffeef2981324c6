"""Real count data shipped with the package."""

from __future__ import annotations

from importlib import resources
from typing import Any

__all__ = ["load_pbmc"]


def load_pbmc() -> Any:
    """700 peripheral blood mononuclear cells × 765 genes of raw UMI counts.

    The counts of scanpy's ``pbmc68k_reduced`` (10x Genomics, fresh 68k PBMCs, donor A),
    recovered from its log-normalised ``raw.X`` and library sizes (integers to within
    0.08; see ``sbi_vi/singlecell/data/README.md``). ``obs["bulk_labels"]`` holds 10 cell
    types, ``obs["batch"]`` the 10x library of each cell.

    Returns:
        An ``AnnData`` with ``X`` a CSR matrix of int32 counts.

    Example:
        >>> adata = load_pbmc()
        >>> adata.shape
        (700, 765)
    """
    import anndata

    path = resources.files("sbi_vi.singlecell") / "data" / "pbmc68k_reduced_counts.h5ad"
    with resources.as_file(path) as file:
        adata = anndata.read_h5ad(file)
    return adata
