"""The decoder's output layers as one matrix product (inference) against the layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbi_vi.singlecell.loader import CellBatch
from sbi_vi.singlecell.module import VAE
from sbi_vi.singlecell.nn import StackedHeads


@pytest.mark.parametrize("bias", [True, False])
def test_stacked_heads_equal_the_layers(bias):
    torch.manual_seed(0)
    layers = [nn.Linear(7, 5, bias=bias), nn.Linear(7, 3), nn.Linear(7, 4, bias=bias)]
    h = torch.randn(6, 7)
    outputs = StackedHeads(layers)(h)
    assert [o.shape for o in outputs] == [(6, 5), (6, 3), (6, 4)]
    for out, layer in zip(outputs, layers, strict=True):
        torch.testing.assert_close(out, layer(h).detach())


@pytest.mark.parametrize(
    ("gene_likelihood", "dispersion"),
    [("zinb", "gene"), ("zinb", "gene-cell"), ("nb", "gene-batch"), ("poisson", "gene")],
)
def test_generative_with_stacked_heads_equals_the_layers(gene_likelihood, dispersion):
    torch.manual_seed(1)
    vae = VAE(30, n_batch=2, n_hidden=8, n_latent=3, gene_likelihood=gene_likelihood,
              dispersion=dispersion).eval()  # fmt: skip
    x = torch.poisson(torch.rand(4, 30) * 5)
    empty = torch.zeros(4, 0)
    cells = CellBatch(
        x=x,
        batch_index=torch.tensor([0, 1, 1, 0]),
        labels=torch.zeros(4, dtype=torch.long),
        cat_covs=empty.long(),
        cont_covs=empty,
        size_factor=None,
        indices=torch.arange(4),
    )
    z, log_library = torch.randn(2, 4, 3), x.sum(-1).clamp(min=1).log()
    with torch.no_grad():
        plain = vae.generative(z, log_library, cells)
        stacked = vae.generative(z, log_library, cells, heads=vae.stacked_heads())
        torch.testing.assert_close(stacked.mu, plain.mu)
        torch.testing.assert_close(stacked.log_prob_sum(x), plain.log_prob_sum(x))
        if gene_likelihood != "poisson":
            torch.testing.assert_close(stacked.theta, plain.theta)
        if gene_likelihood == "zinb":
            torch.testing.assert_close(stacked.zi_logits, plain.zi_logits)


def test_marginal_ll_and_elbo_equal_the_torch_forms(trained_model, monkeypatch):
    # the compiled ZINB kernel and the stacked heads against the layers and the torch node
    from sbi_vi.singlecell import softmax_nb

    assert trained_model.module.gene_likelihood == "zinb"

    def values():
        return (
            trained_model.get_marginal_ll(n_mc_samples=20, return_mean=False, seed=0),
            trained_model.get_elbo(return_mean=False, seed=0),
        )

    fast = values()
    monkeypatch.setattr(VAE, "stacked_heads", lambda self: None)
    monkeypatch.setattr(softmax_nb, "zinb_log_likelihood_cpu", lambda *args: None)
    for value, reference in zip(fast, values(), strict=True):
        torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-3)
