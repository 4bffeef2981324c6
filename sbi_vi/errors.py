"""Exception and warning classes of sbi_vi."""

from __future__ import annotations

__all__ = ["NotTrainedError", "QualityWarning", "SbiViError", "SimulationWarning"]


class SbiViError(Exception):
    """Base class of every error that sbi_vi raises on purpose."""


class NotTrainedError(SbiViError, RuntimeError):
    """A method needs a trained variational posterior, but ``train`` was not called."""


class QualityWarning(UserWarning):
    """A diagnostic says the variational posterior should not be trusted as is."""


class SimulationWarning(UserWarning):
    """Simulations were dropped or altered (e.g. NaN/inf outputs)."""
