"""The VAE module on raw tensors: shapes, log densities, gradients, every option."""

from __future__ import annotations

import math

import pytest
import torch

from sbi_vi.singlecell.distributions import log_nb
from sbi_vi.singlecell.loader import CellBatch
from sbi_vi.singlecell.module import VAE
from sbi_vi.vi.divergences import ImportanceWeighted, RenyiAlpha, ReverseKL

B, G = 16, 30


def _cells(n_cat: int = 0, n_cont: int = 0, n_batch: int = 2) -> CellBatch:
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(B, G, generator=g) * 4)
    return CellBatch(
        x=x,
        batch_index=torch.randint(n_batch, (B,), generator=g),
        labels=torch.randint(3, (B,), generator=g),
        cat_covs=torch.randint(4, (B, n_cat), generator=g),
        cont_covs=torch.randn(B, n_cont, generator=g),
        size_factor=None,
        indices=torch.arange(B),
    )


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson"])
@pytest.mark.parametrize("dispersion", ["gene", "gene-batch", "gene-label", "gene-cell"])
def test_shapes_and_gradients(likelihood, dispersion):
    torch.manual_seed(0)
    module = VAE(G, n_batch=2, n_labels=3, n_latent=4, n_hidden=8, dispersion=dispersion,
                 gene_likelihood=likelihood)  # fmt: skip
    out = module.loss(_cells(), ReverseKL(), n_particles=3)
    assert out.elbo.shape == (B,) and out.log_w.shape == (3, B)
    out.loss.backward()
    for name, p in module.named_parameters():
        if "px_r" in name and likelihood == "poisson":
            continue
        if "px_dropout" in name and likelihood != "zinb":
            continue
        assert p.grad is not None, name


def test_log_likelihood_is_the_nb_of_the_decoder():
    torch.manual_seed(1)
    module = VAE(G, n_latent=3, n_hidden=8, gene_likelihood="nb").eval()
    cells = _cells(n_batch=1)
    with torch.no_grad():
        log_px, log_prior, log_q, _, px = module.log_densities(cells, 2)  # one batch
        expected = log_nb(cells.x, px.mu, px.theta).sum(-1)
        mu_rows = px.mu.sum(-1)
    torch.testing.assert_close(log_px, expected)
    # the rate is the observed library size times a probability vector
    torch.testing.assert_close(mu_rows, cells.x.sum(-1).expand(2, B))
    # log p(z) of the standard normal
    assert log_prior.shape == (2, B) and log_q.shape == (2, B)


def test_elbo_pieces_add_up():
    torch.manual_seed(2)
    module = VAE(G, n_latent=3, n_hidden=8).eval()
    with torch.no_grad():
        out = module.loss(_cells(n_batch=1), ReverseKL(), n_particles=5)
    torch.testing.assert_close(out.elbo, -(out.reconstruction_loss + out.kl_local))
    torch.testing.assert_close(out.log_w.mean(0), out.elbo)


def test_kl_weight_scales_the_prior_and_entropy_terms():
    cells = _cells(n_batch=1)
    module = VAE(G, n_latent=3, n_hidden=8).eval()
    torch.manual_seed(3)
    full = module.loss(cells, ReverseKL(), kl_weight=1.0)
    torch.manual_seed(3)
    none = module.loss(cells, ReverseKL(), kl_weight=0.0)
    # with weight 0 the surrogate is the reconstruction loss alone
    torch.testing.assert_close(none.loss, none.reconstruction_loss.mean())
    torch.testing.assert_close(full.loss, -full.elbo.mean())


def test_iwae_and_alpha_bounds_lie_between_elbo_and_log_evidence():
    torch.manual_seed(4)
    module = VAE(G, n_latent=3, n_hidden=8).eval()
    cells = _cells(n_batch=1)
    with torch.no_grad():
        log_px, log_prior, log_q, _, _ = module.log_densities(cells, 4000)
        log_w = log_px + log_prior - log_q
        elbo = log_w.mean(0)
        log_z = torch.logsumexp(log_w, 0) - math.log(4000)
        iw = ImportanceWeighted(K=50).from_log_densities(log_px + log_prior, log_q).value
    assert (-iw >= elbo - 1e-3).all()
    assert (-iw <= log_z + 1e-3).all()
    out = module.loss(cells, RenyiAlpha(alpha=0.5), n_particles=4)
    out.loss.backward()


def test_latent_library_covariates_and_flow_encoder():
    torch.manual_seed(5)
    module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, n_layers=2, n_cats_per_cov=[4],
                 n_continuous_cov=2, use_observed_lib_size=False,
                 library_log_means=torch.tensor([4.0, 4.5]),
                 library_log_vars=torch.tensor([0.5, 0.6]), encode_covariates=True,
                 q="maf", latent_distribution="ln")  # fmt: skip
    cells = _cells(n_cat=1, n_cont=2)
    out = module.loss(cells, ReverseKL(stick_the_landing=True), n_particles=2)
    out.loss.backward()
    assert module.latent_size == 4
    u = module.q(cells).sample((2,))
    z, log_lib = module.split(u, cells)
    torch.testing.assert_close(z.sum(-1), torch.ones(2, B))  # logistic normal
    assert log_lib.shape == (2, B)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="dispersion"):
        VAE(G, dispersion="cell")
    with pytest.raises(ValueError, match="gene_likelihood"):
        VAE(G, gene_likelihood="gaussian")
    with pytest.raises(ValueError, match="library_log_means"):
        VAE(G, use_observed_lib_size=False)
    with pytest.raises(ValueError, match=r"library_log_means.*\[2\]"):
        VAE(G, n_batch=2, use_observed_lib_size=False, library_log_means=torch.zeros(3),
            library_log_vars=torch.ones(3))  # fmt: skip
    with pytest.raises(ValueError, match="dropout_rate"):
        VAE(G, dropout_rate=1.5)
