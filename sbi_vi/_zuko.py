"""Import zuko without letting it change torch's global state.

zuko sets ``torch.distributions.Distribution._validate_args = False`` on import; sbi_vi
promises not to change global torch state, so the flag is restored right after the import.
The distributions sbi_vi builds itself pass ``validate_args=False`` explicitly.
"""

from __future__ import annotations

from torch.distributions import Distribution

_previous = Distribution._validate_args
import zuko  # noqa: E402
import zuko.flows  # noqa: E402
import zuko.lazy  # noqa: E402

Distribution._validate_args = _previous

__all__ = ["zuko"]
