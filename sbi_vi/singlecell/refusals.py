"""What scvi-tools' models offer and ``sbi_vi.singlecell`` does not: each name is there, and
refuses with an error that says so and what to do instead (listed in the guide's "Coming
from scvi-tools" section).

:class:`ScviToolsRefusals` is a mixin of the models: scArches reference mapping, minified
and MuData objects, scvi-tools' legacy saves and ``AnnDataManager`` store, differential
abundance, annbatch collections, scvi-tools' importance-weight signature and the Lightning
``trainer``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScviToolsRefusals"]


def _not_offered(cls: type, name: str, what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{cls.__name__}.{name} ({what}) is a scvi-tools method that sbi_vi.singlecell does not "
        "offer; see the guide's 'Coming from scvi-tools' section for what maps and what not."
    )


def _refusal(name: str, what: str, instead: str) -> classmethod:
    """A model method ``name`` that raises :class:`NotImplementedError` naming ``what`` is
    not offered (callable on the class and on an instance, as scvi-tools' are)."""

    def refuse(cls: type, *args: Any, **kwargs: Any) -> Any:
        raise _not_offered(cls, name, what)

    refuse.__name__ = refuse.__qualname__ = name
    refuse.__doc__ = (
        f"Not offered: {what}. {instead}\n\nRaises:\n    NotImplementedError: Always.\n"
    )
    return classmethod(refuse)


class ScviToolsRefusals:
    """scvi-tools model methods that refuse with a clear error (a mixin of the models)."""

    load_query_data = _refusal(
        "load_query_data",
        "scArches reference mapping",
        "Train one model on reference and query cells together (``setup_anndata`` on their "
        "concatenation) instead.",
    )
    prepare_query_anndata = _refusal(
        "prepare_query_anndata", "scArches query set-up", "See ``load_query_data``."
    )
    prepare_query_mudata = _refusal(
        "prepare_query_mudata", "MuData scArches query set-up", "See ``load_query_data``."
    )
    minify_adata = _refusal(
        "minify_adata", "minified AnnData", "The model keeps reading the counts."
    )
    convert_legacy_save = _refusal(
        "convert_legacy_save",
        "scvi-tools' legacy save files",
        "sbi_vi reads only its own saves (``save``).",
    )
    setup_mudata = _refusal(
        "setup_mudata", "MuData", "Set up the RNA modality's AnnData with ``setup_anndata``."
    )
    differential_abundance = _refusal(
        "differential_abundance",
        "differential abundance",
        "``get_aggregated_posterior`` gives the per-sample mixtures it compares.",
    )
    register_manager = _refusal(
        "register_manager", "the AnnDataManager store", "``setup_anndata`` sets up."
    )
    deregister_manager = _refusal(
        "deregister_manager", "the AnnDataManager store", "``setup_anndata`` sets up."
    )
    update_setup_method_args = _refusal(
        "update_setup_method_args",
        "editing the set-up",
        "Call ``setup_anndata`` again and build a new model.",
    )
    load_registry = _refusal(
        "load_registry",
        "scvi-tools' saved registry",
        "``view_setup_args(dir_path)`` prints a saved model's set-up.",
    )
    setup_annbatch = _refusal(
        "setup_annbatch",
        "annbatch collections",
        'A backed h5ad (``read_h5ad(backed="r")``) streams an atlas larger than memory.',
    )
    get_importance_weights = _refusal(
        "get_importance_weights",
        "scvi-tools' DE weights",
        '``differential_expression(weights="importance")`` weights cells by PSIS.',
    )

    @property
    def trainer(self) -> Any:
        """Not offered: there is no Lightning ``Trainer``; ``history`` holds the metrics.

        Raises:
            AttributeError: Always (so that ``hasattr(model, "trainer")`` is ``False``).
        """
        raise AttributeError(
            f"{type(self).__name__} has no Lightning `trainer`: sbi_vi.singlecell trains "
            "without Lightning; the metrics are in `model.history`."
        )
