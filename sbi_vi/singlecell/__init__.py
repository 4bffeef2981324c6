"""An scVI-style single-cell VAE on the sbi_vi engine, with the scvi-tools API.

- :class:`SCVI` — the model on AnnData: ``setup_anndata``, ``train``, ELBO, marginal LL,
  latent representation, normalised expression, differential expression, ...
- :class:`VAE` — the module on tensors (encoder = an engine family, loss = an engine
  divergence on ``[particles, cells]`` log densities).
- :func:`synthetic_counts` — counts with ground truth (types, batches, DE genes).
- :func:`load_pbmc` — a real count matrix (700 PBMCs × 765 genes).
- :data:`settings` — ``settings.seed`` and ``settings.batch_size``, as ``scvi.settings``.

Requires the ``singlecell`` extra (anndata, pandas).
"""

from sbi_vi.singlecell.datasets import load_pbmc
from sbi_vi.singlecell.distributions import (
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
)
from sbi_vi.singlecell.fields import AnnDataSetup, setup_anndata
from sbi_vi.singlecell.model import SCVI
from sbi_vi.singlecell.module import VAE, LossOutput
from sbi_vi.singlecell.registry import REGISTRY_KEYS
from sbi_vi.singlecell.settings import settings
from sbi_vi.singlecell.synthetic import synthetic_counts

__all__ = [
    "REGISTRY_KEYS",
    "SCVI",
    "VAE",
    "AnnDataSetup",
    "LossOutput",
    "NegativeBinomial",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "load_pbmc",
    "settings",
    "setup_anndata",
    "synthetic_counts",
]
