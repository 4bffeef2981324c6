"""Package settings of the single-cell front end, as scvi-tools' ``scvi.settings``.

A scvi-tools user writes ``scvi.settings.seed = 0``; here it is
``sbi_vi.singlecell.settings.seed = 0``. Unlike scvi-tools, setting the seed does not
reseed torch's, numpy's or Python's global generators (nothing in sbi_vi changes global
state): each model reads it where randomness enters — the weights drawn when a model is
built, the train/validation split, the minibatch order and the training noise — each from
its own generator seeded from it, so that building and training twice with one seed gives
identical weights whatever else the program draws in between.

Example:
    >>> from sbi_vi.singlecell import settings
    >>> settings.seed = 0
    >>> settings.seed
    0
    >>> settings.seed = None
"""

from __future__ import annotations

from sbi_vi._checks import check_positive_int

__all__ = ["Settings", "settings"]


class Settings:
    """Global options of :mod:`sbi_vi.singlecell` (one instance: :data:`settings`).

    Attributes:
        seed: Seed of model construction, data split, minibatch order and training noise
            (``None``: drawn from torch's global generator, so ``torch.manual_seed``
            still makes a run reproducible).
        batch_size: Cells per forward pass when a method gets ``batch_size=None``.
    """

    def __init__(self, seed: int | None = None, batch_size: int = 128):
        self.seed = seed
        self.batch_size = batch_size

    @property
    def seed(self) -> int | None:
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._seed = None if value is None else check_positive_int("seed", value, allow_zero=True)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = check_positive_int("batch_size", value)

    def __repr__(self) -> str:
        return f"Settings(seed={self.seed!r}, batch_size={self.batch_size!r})"


settings = Settings()
"""The settings every single-cell model reads."""
