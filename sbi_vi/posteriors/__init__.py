"""Posteriors with the sbi API."""

from sbi_vi.posteriors.amortized import AmortizedQuality
from sbi_vi.posteriors.vi_posterior import VIPosterior

__all__ = ["AmortizedQuality", "VIPosterior"]
