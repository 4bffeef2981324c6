"""The return type of ``posterior_predictive_sample``: numpy counts that also answer what
scvi-tools users call on theirs.

scvi-tools 1.5 returns a pydata-sparse ``GCXS`` array, and its users' code calls
``.todense()`` (or ``.to_scipy_sparse()``, ``.nnz``, ``.density``) on it. :class:`CountArray`
is a plain :class:`numpy.ndarray` — every numpy operation works as on one — with those four
names as well, so such code runs unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["CountArray"]


class CountArray(np.ndarray):
    """Counts ``[n_cells, n_genes]`` or ``[n_cells, n_genes, n_samples]`` (a numpy array).

    Example:
        >>> counts = CountArray.of(np.array([[0.0, 2.0], [1.0, 0.0]]))
        >>> counts.todense().tolist(), counts.nnz, counts.density
        ([[0.0, 2.0], [1.0, 0.0]], 2, 0.5)
        >>> type(counts.sum()).__name__  # reductions to one number give a numpy scalar
        'float64'
    """

    @classmethod
    def of(cls, array: np.ndarray) -> CountArray:
        """A view of ``array`` as a :class:`CountArray` (no copy)."""
        return np.asarray(array).view(cls)

    def __array_wrap__(
        self, array: np.ndarray, context: Any = None, return_scalar: bool = False
    ) -> Any:
        if array.ndim == 0:
            return array[()]
        return super().__array_wrap__(array, context, return_scalar)

    def todense(self) -> np.ndarray:
        """The counts as a plain numpy array (a view)."""
        return np.asarray(self)

    def to_scipy_sparse(self) -> sp.csr_matrix:
        """The counts as a CSR matrix.

        Raises:
            ValueError: For draws ``[n_cells, n_genes, n_samples]`` (a matrix is 2-D).
        """
        if self.ndim != 2:
            raise ValueError(
                f"`to_scipy_sparse` needs 2-D counts (n_samples=1); these have shape {self.shape}."
            )
        return sp.csr_matrix(np.asarray(self))

    @property
    def nnz(self) -> int:
        """The number of non-zero counts."""
        return int(np.count_nonzero(np.asarray(self)))

    @property
    def density(self) -> float:
        """The fraction of non-zero counts."""
        return self.nnz / max(self.size, 1)
