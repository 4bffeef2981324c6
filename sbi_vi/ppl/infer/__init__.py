"""Inference for :mod:`sbi_vi.ppl` models on the VI engine.

- Autoguides (:class:`AutoNormal`, :class:`AutoMultivariateNormal`, :class:`AutoFlow`,
  :class:`AutoDelta`): guides built from the model's latent sites; each is also an engine
  family over the flat vector of unconstrained global latents.
- :class:`SVI`: fits a guide with one of the engine's divergences (``rKL`` = the ELBO,
  ``IW``, ``alpha``, ``fKL``) through the engine's fit loop.
- :class:`SVIResult`: parameters and losses, ``sample_posterior`` (scvi-tools' site-by-site
  summaries), ``evaluate`` (PSIS k-hat), ``log_evidence`` and ``to_inference_data``.
- :class:`Predictive`: prior and posterior predictive draws.

Example:
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from sbi_vi.ppl import plate, sample
    >>> def model(x):
    ...     mu = sample("mu", Normal(0.0, 10.0))
    ...     with plate("data", x.shape[0], subsample_size=10) as idx:
    ...         sample("x", Normal(mu, 1.0), obs=x[idx])
    >>> x = torch.randn(100) + 1.0
    >>> svi = SVI(model, AutoNormal(model), lr=0.05)
    >>> result = svi.run(200, x, seed=0, show_progress_bar=False)
    >>> summary = result.sample_posterior(num_samples=200, seed=0)
    >>> sorted(summary), summary["means"]["mu"].shape
    (['means', 'q05', 'q95', 'stds'], ())
"""

from sbi_vi.ppl.infer.autoguides import (
    AutoDelta,
    AutoFlow,
    AutoGuide,
    AutoMultivariateNormal,
    AutoNormal,
)
from sbi_vi.ppl.infer.evidence import LogEvidence
from sbi_vi.ppl.infer.init import (
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_value,
)
from sbi_vi.ppl.infer.predictive import Predictive
from sbi_vi.ppl.infer.svi import SVI, SVIResult

__all__ = [
    "SVI",
    "AutoDelta",
    "AutoFlow",
    "AutoGuide",
    "AutoMultivariateNormal",
    "AutoNormal",
    "LogEvidence",
    "Predictive",
    "SVIResult",
    "init_to_feasible",
    "init_to_mean",
    "init_to_median",
    "init_to_sample",
    "init_to_value",
]
