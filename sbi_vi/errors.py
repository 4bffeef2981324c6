"""Exception and warning classes of sbi_vi."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DivergedWarning",
    "NotTrainedError",
    "QualityWarning",
    "SbiViError",
    "SimulationError",
    "SimulationWarning",
]


class SbiViError(Exception):
    """Base class of every error that sbi_vi raises on purpose."""


class NotTrainedError(SbiViError, ValueError, RuntimeError):
    """A method needs a trained object (posterior, estimator), but it was not trained.

    A ``ValueError`` because sbi raises ``ValueError`` in the same places (code written for
    sbi catches that), and still a ``RuntimeError`` as it was in earlier versions.
    """


class QualityWarning(UserWarning):
    """A diagnostic says the variational posterior should not be trusted as is."""


class DivergedWarning(UserWarning):
    """An optimisation diverged: many steps were skipped as non-finite, or the fit is not finite.

    Filter it like any warning (``warnings.simplefilter("error", DivergedWarning)`` turns a
    diverged fit into an exception).
    """


class SimulationWarning(UserWarning):
    """Simulations were dropped or altered (e.g. NaN/inf outputs)."""


class SimulationError(SbiViError, RuntimeError):
    """The simulator raised; the simulations finished before it are kept on the exception.

    The original exception is chained as ``__cause__``.

    Attributes:
        theta: Parameters of the simulations that completed, shape ``[M, D]``, in the order
            of the rows they were drawn in. After a failure no new chunk starts: joblib
            workers finish the chunks they are running (kept), Dask cancels every chunk not
            finished yet; the failing chunk keeps the rows before the failing θ.
        x: Their outputs, float32, shape ``[M, L]`` (``[0, 0]`` if none completed); NaN/inf
            rows are not removed.
        failed_theta: The θ the simulator failed on, shape ``[D]``, or ``[B, D]`` for the
            batch a batch simulator failed on.
        index: Row of ``failed_theta`` (its first row for a batch) among all drawn θ.
    """

    def __init__(
        self, message: str, *, theta: Tensor, x: Tensor, failed_theta: Tensor, index: int
    ):
        super().__init__(message)
        self.theta = theta
        self.x = x
        self.failed_theta = failed_theta
        self.index = index
