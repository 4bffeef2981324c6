"""sbi_vi: simulation-based inference with variational posteriors."""

__version__ = "0.1.0"
