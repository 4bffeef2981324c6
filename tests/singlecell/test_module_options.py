"""scvi-tools 1.5's ``VAE`` options that ``SCVI(adata, **kwargs)`` forwards.

Each option is checked on the module (raw tensors: the structure and the formula scVI uses)
and as a scvi-tools user calls it (``SCVI.setup_anndata``; ``SCVI(adata, option=...)``;
``train(max_epochs=2)``; then the methods that read the option).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sbi_vi.singlecell import SCVI, synthetic_counts
from sbi_vi.singlecell.loader import CellBatch
from sbi_vi.singlecell.module import VAE
from sbi_vi.singlecell.nn import FCLayers
from sbi_vi.singlecell.normal import NormalLikelihood
from sbi_vi.vi.divergences import ReverseKL

B, G = 16, 30
PLACEMENTS = ("encoder", "decoder", "none", "both")


def _cells(n_cat: int = 0, n_cont: int = 0, n_batch: int = 2, size_factor=None) -> CellBatch:
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(B, G, generator=g) * 4)
    return CellBatch(
        x=x,
        batch_index=torch.randint(n_batch, (B,), generator=g),
        labels=torch.randint(3, (B,), generator=g),
        cat_covs=torch.randint(4, (B, n_cat), generator=g),
        cont_covs=torch.randn(B, n_cont, generator=g),
        size_factor=size_factor,
        indices=torch.arange(B),
    )


def _adata(**setup):
    adata = synthetic_counts(60, 20, n_cell_types=2, n_de_genes=4, seed=1)
    adata.obs["age"] = (adata.obs["library_size"] / 1e3).astype(float)
    adata.obs["donor"] = np.where(np.arange(60) % 3 == 0, "a", "b")
    SCVI.setup_anndata(adata, batch_key="batch", **setup)
    return adata


def _trained(adata, **options) -> SCVI:
    model = SCVI(adata, n_latent=2, n_hidden=8, **options)
    model.train(max_epochs=2, show_progress_bar=False, seed=0)
    return model


# -- defaults: the same numbers as before the options existed -----------------------------

# ELBO sums of one loss evaluation (construction under seed 0, draws under seed 1),
# computed on commit c0c9b55, before these options.
_BEFORE = {
    "default": ({}, {}, -1196.6600341796875),
    "nb_genebatch_2layers_cat": (
        {"gene_likelihood": "nb", "dispersion": "gene-batch", "n_layers": 2,
         "n_cats_per_cov": [4]},
        {"n_cat": 1},
        -975.4507446289062,
    ),
    "cat_cont_1layer": (
        {"n_cats_per_cov": [4], "n_continuous_cov": 2}, {"n_cat": 1, "n_cont": 2},
        -1158.7774658203125,
    ),
    "poisson_latent_lib": (
        {"gene_likelihood": "poisson", "use_observed_lib_size": False,
         "library_log_means": torch.tensor([3.0, 3.5]),
         "library_log_vars": torch.tensor([0.5, 0.7])},
        {},
        -1430.4984130859375,
    ),
    "genecell_ln_layernorm": (
        {"dispersion": "gene-cell", "latent_distribution": "ln", "use_batch_norm": "none",
         "use_layer_norm": "both"},
        {},
        -1133.7747802734375,
    ),
    "gaussian_noinject": (
        {"q": "gaussian", "deeply_inject_covariates": False, "n_layers": 2,
         "use_batch_norm": "encoder"},
        {},
        -1087.81884765625,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_BEFORE))
def test_default_options_give_the_same_elbo_as_before(name):
    options, cell_options, expected = _BEFORE[name]
    torch.manual_seed(0)
    module = VAE(G, n_batch=2, n_labels=3, n_latent=4, n_hidden=8, **options)
    torch.manual_seed(1)
    elbo = module.loss(_cells(**cell_options), ReverseKL(), n_particles=2).elbo.sum()
    assert float(elbo) == pytest.approx(expected, rel=1e-5)


# -- var_activation ------------------------------------------------------------------------


def _encoder_raw(module: VAE, cells: CellBatch) -> torch.Tensor:
    family = module.encoder
    return family.net(family.embedding_net(module.encoder_context(cells)))


@pytest.mark.parametrize(
    ("activation", "extra", "eps"),
    [(torch.exp, None, 1e-4), (F.softplus, None, 1e-4), (F.softplus, {"var_eps": 0.01}, 0.01),
     (None, {"var_eps": 0.01}, 0.01)],
)  # fmt: skip
def test_var_activation_is_scvis_variance_head(activation, extra, eps):
    torch.manual_seed(0)
    module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, var_activation=activation,
                 extra_encoder_kwargs=extra).eval()  # fmt: skip
    with torch.no_grad():  # give the zero-initialised head non-zero outputs
        for p in module.encoder.net.parameters():
            p.normal_()
        cells = _cells()
        raw = _encoder_raw(module, cells)
        base = module.encoder.base(module.encoder.embedding_net(module.encoder_context(cells)))
    act = torch.exp if activation is None else activation
    torch.testing.assert_close(base.loc, raw[..., :3])
    torch.testing.assert_close(base.scale, (act(raw[..., 3:]) + eps).sqrt())


def test_var_activation_refusals():
    with pytest.raises(ValueError, match=r"var_activation.*gaussian_diag"):
        VAE(G, var_activation=F.softplus, q="gaussian")
    with pytest.raises(TypeError, match="var_activation"):
        VAE(G, var_activation="softplus")
    with pytest.raises(ValueError, match="var_eps"):
        VAE(G, extra_encoder_kwargs={"var_eps": -1.0})


def test_var_activation_through_scvi(tmp_path):
    adata = _adata()
    model = _trained(adata, var_activation=F.softplus)
    assert np.isfinite(float(model.get_elbo()))
    z = model.get_latent_representation()
    assert z.shape == (60, 2) and np.isfinite(z).all()
    model.save(tmp_path / "m", overwrite=True)
    loaded = SCVI.load(tmp_path / "m", adata=adata)
    assert loaded.module.encoder.var_activation is F.softplus
    np.testing.assert_allclose(loaded.get_latent_representation(), z, rtol=1e-5, atol=1e-6)


# -- norms ---------------------------------------------------------------------------------


def _norm_kinds(fc) -> list[set[type]]:
    kinds = []
    for norm in fc.norms:
        modules = list(norm) if isinstance(norm, nn.Sequential) else [norm]
        kinds.append({type(m) for m in modules} - {nn.Identity})
    return kinds


@pytest.mark.parametrize("batch_norm", PLACEMENTS)
@pytest.mark.parametrize("layer_norm", PLACEMENTS)
def test_norm_placement_as_scvi(batch_norm, layer_norm):
    module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, n_layers=2,
                 use_batch_norm=batch_norm, use_layer_norm=layer_norm)  # fmt: skip
    for part, fc in (("encoder", module.encoder.embedding_net), ("decoder", module.decoder)):
        expected = set()
        if batch_norm in (part, "both"):
            expected.add(nn.BatchNorm1d)
        if layer_norm in (part, "both"):
            expected.add(nn.LayerNorm)
        assert _norm_kinds(fc) == [expected, expected], (part, batch_norm, layer_norm)
        for norm in fc.norms:  # scVI: BatchNorm first, then LayerNorm
            if isinstance(norm, nn.Sequential):
                assert [type(m) for m in norm] == [nn.BatchNorm1d, nn.LayerNorm]
    out = module.loss(_cells(), ReverseKL())
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    ("batch_norm", "layer_norm"),
    [("encoder", "decoder"), ("decoder", "encoder"), ("none", "both"), ("both", "both")],
)
def test_norm_choices_through_scvi(batch_norm, layer_norm):
    model = _trained(_adata(), use_batch_norm=batch_norm, use_layer_norm=layer_norm)
    assert np.isfinite(model.history["elbo_train"].to_numpy()).all()
    assert model.get_normalized_expression(return_numpy=True).shape == (60, 20)


def test_norm_choice_errors():
    with pytest.raises(ValueError, match="use_batch_norm"):
        VAE(G, use_batch_norm=True)
    with pytest.raises(ValueError, match="use_layer_norm"):
        VAE(G, use_layer_norm="all")


# -- encode_covariates / deeply_inject_covariates -----------------------------------------


def _injected(fc) -> list[int]:
    """Number of categorical covariates injected into each layer."""
    return [len(layer.embeddings) for layer in fc.layers]


@pytest.mark.parametrize("encode", [False, True])
@pytest.mark.parametrize("deep", [False, True])
def test_covariates_enter_as_in_scvi(encode, deep):
    module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, n_layers=3, n_cats_per_cov=[4],
                 n_continuous_cov=2, encode_covariates=encode,
                 deeply_inject_covariates=deep)  # fmt: skip
    later = 2 if deep else 0
    # decoder: batch and covariate codes into the first (and, deep, every) layer; the
    # continuous covariates are part of the first layer's input only
    assert _injected(module.decoder) == [2, later, later]
    widths = [layer.linear.in_features for layer in module.decoder.layers]
    assert widths == [3 + 2, 8, 8]
    body = module.encoder.embedding_net
    if encode:
        assert _injected(body.fc) == [2, later, later]
        assert [layer.linear.in_features for layer in body.fc.layers] == [G + 2, 8, 8]
    else:
        assert _injected(body) == [0, 0, 0]
        assert body.layers[0].linear.in_features == G
    # the encoder reads the batch, the categorical and continuous covariates iff encode
    module.eval()
    cells = _cells(n_cat=1, n_cont=2)
    moved = CellBatch(cells.x, 1 - cells.batch_index, cells.labels, (cells.cat_covs + 1) % 4,
                      cells.cont_covs + 1.0, None, cells.indices)  # fmt: skip
    with torch.no_grad():
        for p in module.encoder.net.parameters():
            p.normal_()
        same = torch.allclose(module.q(cells).base.loc, module.q(moved).base.loc)
    assert same != encode


def test_deep_injection_reaches_every_encoder_layer():
    """With encode_covariates, the batch changes the last hidden layer's pre-activation
    through its own weights (scVI's deep injection), not only through the first layer."""
    module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, n_layers=2, encode_covariates=True)
    last = module.encoder.embedding_net.fc.layers[1]
    with torch.no_grad():
        last.embeddings[0].weight.copy_(torch.tensor([[0.0] * 8, [1.0] * 8]))
        h = torch.zeros(1, 8)
        shift = last(h, [torch.tensor([1])], None) - last(h, [torch.tensor([0])], None)
    torch.testing.assert_close(shift, torch.ones(1, 8))


def test_encode_covariates_through_scvi():
    adata = _adata(categorical_covariate_keys=["donor"], continuous_covariate_keys=["age"])
    model = _trained(adata, encode_covariates=True, deeply_inject_covariates=True, n_layers=2)
    latent = model.get_latent_representation()
    assert latent.shape == (60, 2) and np.isfinite(latent).all()
    expr = model.get_normalized_expression(transform_batch="batch_1", return_numpy=True)
    np.testing.assert_allclose(expr.sum(1), 1.0, rtol=1e-5)
    assert model.get_marginal_ll(n_mc_samples=5) <= 0


# -- use_size_factor_key -------------------------------------------------------------------


def test_size_factor_is_the_library_with_a_softplus_scale():
    sf = torch.linspace(0.5, 2.0, B)
    cells = _cells(size_factor=sf)
    for likelihood in ("zinb", "nb", "poisson", "normal"):
        torch.manual_seed(0)
        module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, gene_likelihood=likelihood,
                     use_size_factor_key=True, use_observed_lib_size=False).eval()  # fmt: skip
        assert module.use_observed_lib_size  # use_size_factor_key takes priority (scVI)
        with torch.no_grad():
            z = torch.randn(2, B, 3)
            px = module.generative(z, module.observed_log_library(cells), cells)
            h = module.decoder(z.reshape(-1, 3), [cells.batch_index.repeat(2)])
            logits = module.px_scale_decoder(h).reshape(2, B, G)
        torch.testing.assert_close(px.scale, F.softplus(logits))
        torch.testing.assert_close(px.mu, sf[:, None] * px.scale)
        assert not torch.allclose(px.scale.sum(-1), torch.ones(2, B))  # softplus, not softmax
    with pytest.raises(ValueError, match="size_factor_key"):
        VAE(G, use_size_factor_key=True).loss(_cells(), ReverseKL())


def test_use_size_factor_key_through_scvi():
    adata = synthetic_counts(60, 20, n_cell_types=2, n_de_genes=4, seed=1)
    totals = np.asarray(adata.X.sum(1)).ravel()
    adata.obs["sf"] = totals / totals.mean()  # scran-style factors around 1
    SCVI.setup_anndata(adata, batch_key="batch", size_factor_key="sf")
    model = _trained(adata)  # scvi-tools: a registered size factor is used
    assert model.module.use_size_factor_key and model.module.use_observed_lib_size
    torch.manual_seed(0)
    latent = model.get_normalized_expression(library_size="latent", return_numpy=True)
    torch.manual_seed(0)
    scale = model.get_normalized_expression(return_numpy=True)
    np.testing.assert_allclose(latent, scale * adata.obs["sf"].to_numpy()[:, None], rtol=1e-4)
    assert np.isfinite(float(model.get_elbo()))
    assert model.posterior_predictive_sample().shape == (60, 20)
    # explicitly off: the observed total count is the library, ρ a softmax
    off = SCVI(adata, n_latent=2, n_hidden=8, use_size_factor_key=False)
    assert not off.module.use_size_factor_key
    torch.manual_seed(0)
    mu = off.get_normalized_expression(library_size="latent", return_numpy=True)
    np.testing.assert_allclose(mu.sum(1), totals, rtol=1e-4)


def test_use_size_factor_key_needs_a_registered_factor():
    adata = _adata()
    with pytest.raises(ValueError, match="size_factor_key"):
        SCVI(adata, use_size_factor_key=True)
    with pytest.raises(TypeError, match="use_size_factor_key"):
        SCVI(adata, use_size_factor_key="sf")
    assert not SCVI(adata, n_hidden=8).module.use_size_factor_key


# -- extra_encoder_kwargs / extra_decoder_kwargs -------------------------------------------


def test_extra_kwargs_reach_the_blocks():
    module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, n_layers=2,
                 extra_encoder_kwargs={"activation_fn": nn.LeakyReLU, "var_eps": 1e-3},
                 extra_decoder_kwargs={"bias": False, "activation_fn": nn.ELU})  # fmt: skip
    body = module.encoder.embedding_net
    assert all(isinstance(a, nn.LeakyReLU) for a in body.activations)
    assert all(layer.linear.bias is not None for layer in body.layers)
    assert module.encoder.var_eps == 1e-3
    assert all(isinstance(a, nn.ELU) for a in module.decoder.activations)
    assert all(layer.linear.bias is None for layer in module.decoder.layers)
    plain = VAE(G, n_latent=3, n_hidden=8, extra_decoder_kwargs={"use_activation": False})
    assert all(isinstance(a, nn.Identity) for a in plain.decoder.activations)
    assert torch.isfinite(module.loss(_cells(), ReverseKL()).loss)


def test_extra_kwargs_through_scvi():
    model = _trained(_adata(), extra_encoder_kwargs={"activation_fn": nn.LeakyReLU},
                     extra_decoder_kwargs={"bias": False})  # fmt: skip
    assert np.isfinite(float(model.get_elbo()))


@pytest.mark.parametrize(
    ("argument", "value", "match"),
    [
        ("extra_encoder_kwargs", {"n_hiden": 3}, "'n_hiden'.*accepted: activation_fn"),
        ("extra_encoder_kwargs", {"dropout_rate": 0.2}, "'dropout_rate'.*SCVI arguments"),
        ("extra_decoder_kwargs", {"var_eps": 1e-3}, "'var_eps'"),
        ("extra_decoder_kwargs", {"scale_activation": "softplus", "foo": 1}, "'foo'.*'scale_"),
        ("extra_decoder_kwargs", {"activation_fn": torch.relu}, "activation_fn.*nn.Module"),
        ("extra_encoder_kwargs", [("bias", False)], "must be a dict"),
    ],
)
def test_extra_kwargs_errors(argument, value, match):
    with pytest.raises(TypeError, match=match):
        VAE(G, **{argument: value})


# -- gene_likelihood="normal" --------------------------------------------------------------


def test_normal_likelihood_is_scvis_gaussian():
    torch.manual_seed(0)
    module = VAE(G, n_batch=2, n_latent=3, n_hidden=8, gene_likelihood="normal",
                 dispersion="gene-batch").eval()  # fmt: skip
    cells = _cells()
    x = torch.log1p(cells.x)
    cells = CellBatch(x, cells.batch_index, cells.labels, cells.cat_covs, cells.cont_covs,
                      None, cells.indices)  # fmt: skip
    with torch.no_grad():
        log_px, _, _, _, px = module.log_densities(cells, 3)
    assert isinstance(px, NormalLikelihood)
    reference = torch.distributions.Normal(px.mu, px.std).log_prob(x).sum(-1)
    torch.testing.assert_close(log_px, reference)
    torch.testing.assert_close(px.mu, x.sum(-1)[:, None] * px.scale)  # ℓ ρ, ρ a softmax
    torch.testing.assert_close(px.scale.sum(-1), torch.ones(3, B))
    torch.testing.assert_close(px.std[0], torch.exp(module.px_r.T[cells.batch_index]))
    assert torch.isfinite(module.loss(cells, ReverseKL()).loss)


def test_normal_likelihood_draws_have_its_moments():
    mu = torch.tensor([[0.5, 2.0, -1.0]])
    std = torch.tensor([0.1, 1.0, 3.0])
    d = NormalLikelihood(mu, std, torch.full((1, 3), 1 / 3))
    draws = d.sample((20000,))
    assert draws.shape == (20000, 1, 3)
    # 5-sigma bands of the sample mean and sd of 20,000 draws
    assert ((draws.mean(0) - mu).abs() < 5 * std / 20000**0.5).all()
    assert ((draws.std(0) - std).abs() < 5 * std / (2 * 20000) ** 0.5).all()
    torch.testing.assert_close(d.log_prob_sum(mu), d.log_prob(mu).sum(-1))


def _log_normalised(adata) -> np.ndarray:
    counts = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    return np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)


def test_normal_likelihood_through_scvi():
    adata = _adata(labels_key="cell_type")
    # set up on counts, then the log-normalised values
    adata.X = _log_normalised(adata)
    model = _trained(adata, gene_likelihood="normal")
    elbo = float(model.get_elbo())
    assert np.isfinite(elbo)
    torch.manual_seed(0)
    assert float(model.get_marginal_ll(n_mc_samples=50)) >= elbo - 1.0
    assert np.isfinite(float(model.get_reconstruction_error()["reconstruction_loss"]))
    expr = model.get_normalized_expression(return_numpy=True)
    np.testing.assert_allclose(expr.sum(1), 1.0, rtol=1e-5)
    mean = model.get_normalized_expression(library_size="latent", return_numpy=True)
    np.testing.assert_allclose(mean.sum(1), adata.X.sum(1), rtol=1e-4)
    draws = model.posterior_predictive_sample(n_samples=3)
    assert draws.shape == (60, 20, 3) and (draws != np.round(draws)).any()  # not counts
    params = model.get_likelihood_parameters()
    assert set(params) == {"mean", "std"} and (params["std"] > 0).all()
    de = model.differential_expression(groupby="cell_type")
    assert np.isfinite(de["bayes_factor"].to_numpy()).all()


def test_normal_likelihood_on_log_normalised_setup():
    adata = synthetic_counts(60, 20, n_cell_types=2, n_de_genes=4, seed=1)
    adata.X = _log_normalised(adata)
    with pytest.warns(UserWarning, match="does not hold counts"):  # as scvi-tools warns
        SCVI.setup_anndata(adata, batch_key="batch")
    with pytest.raises(ValueError, match="normal"):
        SCVI(adata, gene_likelihood="nb")  # a count likelihood refuses non-counts
    model = _trained(adata, gene_likelihood="normal")
    assert np.isfinite(float(model.get_elbo()))


# -- batch_representation="embedding" ------------------------------------------------------


def test_batch_embedding_module():
    module = VAE(G, n_batch=3, n_latent=3, n_hidden=8, n_layers=2, n_cats_per_cov=[4],
                 batch_representation="embedding", encode_covariates=True,
                 batch_embedding_kwargs={"embedding_dim": 3})  # fmt: skip
    assert module.get_embedding("batch").weight.shape == (3, 3)
    # the batch is no longer a one-hot code: only the covariate is injected
    assert _injected(module.decoder) == [1, 1]
    assert module.decoder.layers[0].linear.in_features == 3 + 3
    assert module.encoder.embedding_net.fc.layers[0].linear.in_features == G + 3
    module.eval()
    cells = _cells(n_cat=1, n_batch=3)
    with torch.no_grad():
        z = module.q(cells).sample((2,))
        a = module.generative(z, torch.zeros(B), cells).scale
        b = module.generative(z, torch.zeros(B), cells,
                              transform_batch=torch.full((B,), 2)).scale  # fmt: skip
    assert not torch.allclose(a, b)
    out = module.loss(cells, ReverseKL())
    out.loss.backward()
    assert module.get_embedding("batch").weight.grad.abs().sum() > 0


def test_batch_embedding_errors():
    with pytest.raises(ValueError, match=r"batch_representation.*'one-hot', 'embedding'"):
        VAE(G, batch_representation="learned")
    with pytest.raises(TypeError, match=r"batch_embedding_kwargs.*'dim'"):
        VAE(G, batch_representation="embedding", batch_embedding_kwargs={"dim": 3})
    with pytest.raises(ValueError, match=r"batch_embedding_kwargs.*embedding"):
        VAE(G, batch_embedding_kwargs={"embedding_dim": 3})


def test_batch_embedding_through_scvi(tmp_path):
    adata = _adata()
    model = _trained(adata, batch_representation="embedding")
    rep = model.get_batch_representation()
    assert isinstance(rep, np.ndarray) and rep.shape == (60, 5)
    model.save(tmp_path / "m", overwrite=True)
    loaded = SCVI.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.get_batch_representation(), rep, atol=1e-8)
    # scvi-tools' EmbeddingModuleMixin: KeyError for a duplicate or missing key
    with pytest.raises(KeyError):
        loaded.module.init_embedding("batch", 2)
    with pytest.raises(KeyError):
        loaded.module.remove_embedding("labels")
    loaded.module.remove_embedding("batch")
    with pytest.raises(KeyError):
        loaded.get_batch_representation()
    codes = adata.obs["batch"].to_numpy()
    for value in np.unique(codes):
        block = rep[codes == value]
        np.testing.assert_allclose(block, np.broadcast_to(block[0], block.shape))
    expr = model.get_normalized_expression(transform_batch="batch_0", return_numpy=True)
    assert expr.shape == (60, 20)
    with pytest.raises(ValueError, match="batch_representation='embedding'"):
        SCVI(adata, n_hidden=8).get_batch_representation()


# -- the rest of VAE.__init__: refused or unknown ------------------------------------------


def test_scvi_kwargs_refused_or_unknown():
    adata = _adata()
    with pytest.raises(TypeError, match="'n_hiden', 'use_gpu'"):
        SCVI(adata, n_hiden=8, use_gpu=True)
    with pytest.raises(TypeError, match=r"'n_batch'.*set-up"):
        SCVI(adata, n_batch=3)
    with pytest.raises(TypeError, match="'library_log_means'"):
        SCVI(adata, library_log_means=np.zeros(2))
    with pytest.raises(ValueError, match="extra_payload_autotune"):
        SCVI(adata, extra_payload_autotune=True)
    model = SCVI(adata, n_hidden=8, extra_payload_autotune=False, log_variational=False)
    assert not model.module.log_variational


# -- the blocks: scVI's one-hot layers, computed without the one-hots ----------------------


@settings(max_examples=25, deadline=None)
@given(
    n_in=st.integers(1, 6),
    n_cats=st.lists(st.integers(1, 4), max_size=3),
    n_layers=st.integers(1, 3),
    inject=st.booleans(),
    batch_norm=st.booleans(),
    layer_norm=st.booleans(),
    n=st.integers(2, 5),
)
def test_fclayers_equal_scvis_one_hot_layers(n_in, n_cats, n_layers, inject, batch_norm,
                                             layer_norm, n):  # fmt: skip
    torch.manual_seed(0)
    fc = FCLayers(n_in, 4, n_cats, n_layers=n_layers, dropout_rate=0.0,
                  use_batch_norm=batch_norm, use_layer_norm=layer_norm,
                  inject_covariates=inject).eval()  # fmt: skip
    h = torch.randn(n, n_in)
    codes = [torch.randint(k, (n,)) for k in n_cats]
    one_hots = [F.one_hot(c, k).float() for c, k in zip(codes, n_cats, strict=True)]
    x = h
    for i, (layer, norm) in enumerate(zip(fc.layers, fc.norms, strict=True)):
        weights = [layer.linear.weight] + [e.weight.T for e in layer.embeddings]
        inputs = torch.cat([x, *one_hots], -1) if (i == 0 or inject) and n_cats else x
        x = torch.relu(norm(inputs @ torch.cat(weights, -1).T + layer.linear.bias))
    with torch.no_grad():
        out = fc(h, codes)
    assert out.shape == (n, 4)
    torch.testing.assert_close(out, x.detach())
