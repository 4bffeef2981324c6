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


class ScviToolsRefusals:
    """scvi-tools model methods that refuse with a clear error (a mixin of the models)."""

    @classmethod
    def load_query_data(cls, *args: Any, **kwargs: Any) -> Any:
        """Not offered: scArches reference mapping.

        Raises:
            NotImplementedError: Always; train one model on reference and query cells
                together (``setup_anndata`` on their concatenation) instead.
        """
        raise _not_offered(cls, "load_query_data", "scArches reference mapping")

    @classmethod
    def prepare_query_anndata(cls, *args: Any, **kwargs: Any) -> Any:
        """Not offered (see :meth:`load_query_data`).

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(cls, "prepare_query_anndata", "scArches query set-up")

    def minify_adata(self, *args: Any, **kwargs: Any) -> None:
        """Not offered: minified AnnData (latent posterior parameters instead of counts).

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(type(self), "minify_adata", "minified AnnData")

    @classmethod
    def convert_legacy_save(cls, *args: Any, **kwargs: Any) -> None:
        """Not offered: sbi_vi reads only its own saves (:meth:`save`).

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(cls, "convert_legacy_save", "scvi-tools' legacy save files")

    @classmethod
    def setup_mudata(cls, *args: Any, **kwargs: Any) -> None:
        """Not offered: MuData; set up the RNA modality's AnnData with ``setup_anndata``.

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(cls, "setup_mudata", "MuData")

    def differential_abundance(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: differential abundance over the aggregated posterior.

        Raises:
            NotImplementedError: Always; :meth:`get_aggregated_posterior` gives the
                per-sample mixtures it compares.
        """
        raise _not_offered(type(self), "differential_abundance", "differential abundance")

    @classmethod
    def register_manager(cls, *args: Any, **kwargs: Any) -> None:
        """Not offered: scvi-tools' ``AnnDataManager`` store (``setup_anndata`` sets up).

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(cls, "register_manager", "the AnnDataManager store")

    def deregister_manager(self, *args: Any, **kwargs: Any) -> None:
        """Not offered (see :meth:`register_manager`).

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(type(self), "deregister_manager", "the AnnDataManager store")

    def update_setup_method_args(self, *args: Any, **kwargs: Any) -> None:
        """Not offered: the set-up is fixed once the model is built.

        Raises:
            NotImplementedError: Always; call ``setup_anndata`` again and build a new model.
        """
        raise _not_offered(type(self), "update_setup_method_args", "editing the set-up")

    @classmethod
    def load_registry(cls, *args: Any, **kwargs: Any) -> dict:
        """Not offered: ``view_setup_args(dir_path)`` prints a saved model's set-up.

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(cls, "load_registry", "scvi-tools' saved registry")

    @classmethod
    def setup_annbatch(cls, *args: Any, **kwargs: Any) -> None:
        """Not offered: annbatch collections; a backed h5ad (``read_h5ad(backed="r")``)
        streams an atlas larger than memory.

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(cls, "setup_annbatch", "annbatch collections")

    @classmethod
    def prepare_query_mudata(cls, *args: Any, **kwargs: Any) -> None:
        """Not offered (MuData, scArches query set-up).

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(cls, "prepare_query_mudata", "MuData scArches query set-up")

    def get_importance_weights(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered with scvi-tools' signature (it takes its own distribution objects):
        ``differential_expression(weights="importance")`` weights cells by PSIS.

        Raises:
            NotImplementedError: Always.
        """
        raise _not_offered(type(self), "get_importance_weights", "scvi-tools' DE weights")

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


def _not_offered(cls: type, name: str, what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{cls.__name__}.{name} ({what}) is a scvi-tools method that sbi_vi.singlecell does not "
        "offer; see the guide's 'Coming from scvi-tools' section for what maps and what not."
    )
