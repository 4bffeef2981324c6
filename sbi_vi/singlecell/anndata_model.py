"""The AnnData side of a single-cell model: set-up, views of it, data access.

:class:`AnnDataModel` holds the model's AnnData and its :class:`~sbi_vi.singlecell.fields.
AnnDataSetup`, checks every other AnnData a method gets against that set-up, answers
scvi-tools' set-up reads (``adata_manager``, ``registry_``, ``summary_stats``,
``view_anndata_setup``) and turns ``(adata, indices, batch_size, dataloader)`` into
minibatches of cells on the model's device (:meth:`AnnDataModel._minibatches`), which is
what the method mixins read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sbi_vi._checks import check_unknown_kwargs
from sbi_vi.singlecell.fields import SETUP_KEY, AnnDataSetup, setup_anndata
from sbi_vi.singlecell.loader import CellBatch, CellData, resolve_indices
from sbi_vi.singlecell.persistence import read_state, saved_setup
from sbi_vi.singlecell.registry import (
    UUID_KEY,
    AnnDataManager,
    assign_uuid,
    attrdict,
    setup_args,
)
from sbi_vi.singlecell.settings import settings

__all__ = ["AnnDataModel"]


def _batch_from_dict(tensors: dict[str, Any]) -> CellBatch:
    """A :class:`CellBatch` from scvi-tools' minibatch keys (``X``, ``batch``, ...)."""
    if "X" not in tensors:
        raise ValueError("A `dataloader` minibatch must hold the counts under the key 'X'.")
    x = torch.as_tensor(tensors["X"], dtype=torch.float32)
    n = x.shape[0]

    def long(key: str, width: int | None = None) -> Tensor:
        value = tensors.get(key)
        if value is None:
            return torch.zeros((n,) if width is None else (n, width), dtype=torch.long)
        value = torch.as_tensor(value).long()
        return value.reshape(n) if width is None else value.reshape(n, -1)

    cont = tensors.get("extra_continuous_covs")
    size_factor = tensors.get("size_factor")
    return CellBatch(
        x=x,
        batch_index=long("batch"),
        labels=long("labels"),
        cat_covs=long("extra_categorical_covs", 0)
        if tensors.get("extra_categorical_covs") is None
        else long("extra_categorical_covs", -1),
        cont_covs=torch.zeros(n, 0) if cont is None else torch.as_tensor(cont).float(),
        size_factor=None if size_factor is None else torch.as_tensor(size_factor).reshape(n),
        indices=torch.arange(n),
    )


class AnnDataModel:
    """A model's AnnData and set-up (the base of :class:`~sbi_vi.singlecell.base.
    BaseSingleCellModel`).

    Args:
        adata: An AnnData set up with ``setup_anndata``.

    Raises:
        ValueError: ``adata`` was not set up.
    """

    setup: AnnDataSetup
    device: torch.device

    def __init__(self, adata: Any):
        record = getattr(adata, "uns", {}).get(SETUP_KEY)
        if record is None:
            raise ValueError(
                f"`adata` was not set up; call `{type(self).__name__}.setup_anndata(adata, ...)` "
                "first."
            )
        self.setup = AnnDataSetup.from_dict(record)
        self._known_uuids: dict[str, int] = {}  # uuid -> id() of the AnnData it marks
        self._adata = adata
        self._register(adata)
        self._data_cache: tuple[int, CellData] | None = None
        self.device = torch.device("cpu")

    @classmethod
    def setup_anndata(
        cls,
        adata: Any,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Declare the fields of ``adata`` the model reads (see
        :func:`sbi_vi.singlecell.fields.setup_anndata`); writes ``adata.uns["_scvi_uuid"]``."""
        check_unknown_kwargs("setup_anndata()", kwargs, ())
        setup_anndata(
            adata,
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            size_factor_key=size_factor_key,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
        )
        assign_uuid(adata, overwrite=True)

    @property
    def adata(self) -> Any:
        """The AnnData the model reads by default; assigning another one checks it against
        the model's set-up (genes, columns, categories) first."""
        return self._adata

    @adata.setter
    def adata(self, adata: Any) -> None:
        if adata is None:
            raise ValueError("`adata` cannot be None.")
        self.setup.transfer(adata)
        self._register(adata)
        self._adata = adata
        self._data_cache = None

    def _register(self, adata: Any) -> None:
        uuid = str(adata.uns.get(UUID_KEY, ""))
        if self._known_uuids.get(uuid, id(adata)) != id(adata):
            assign_uuid(adata, overwrite=True)  # a copy: a marker of its own, as scvi-tools
        self._known_uuids[assign_uuid(adata)] = id(adata)

    def _validate_adata(self, adata: Any | None) -> Any:
        """``adata`` (checked against the model's set-up), or the model's own AnnData."""
        if adata is None:
            return self._adata
        if adata is not self._adata:
            self.setup.transfer(adata)
            self._register(adata)
        return adata

    def _validate_anndata(self, adata: Any | None = None, copy_if_view: bool = True) -> Any:
        """scvi-tools' name of :meth:`_validate_adata` (its scripts and tests call it)."""
        del copy_if_view
        return self._validate_adata(adata)

    @property
    def adata_manager(self) -> AnnDataManager:
        """A read-only view of the set-up of :attr:`adata` (scvi-tools' ``AnnDataManager``:
        ``summary_stats``, ``registry``, ``get_from_registry``, ``get_state_registry``)."""
        return AnnDataManager(self._adata, self.setup, type(self).__name__)

    def get_anndata_manager(self, adata: Any, required: bool = False) -> AnnDataManager | None:
        """The set-up view of ``adata`` if this model has seen it, else ``None``.

        Raises:
            ValueError: With ``required=True``, for an AnnData never set up or never given
                to this model.
        """
        if adata is None:
            return None
        uns = getattr(adata, "uns", {})
        uuid = uns.get(UUID_KEY)
        if uuid is not None and str(uuid) in self._known_uuids:
            return AnnDataManager(adata, self.setup, type(self).__name__)
        if not required:
            return None
        if uuid is None or SETUP_KEY not in uns:
            raise ValueError(
                f"Please set up your AnnData with {type(self).__name__}.setup_anndata first."
            )
        raise ValueError(
            "This AnnData was set up but never given to this model; pass it to one of "
            "the model's methods (`adata=`) or assign `model.adata = adata` first."
        )

    @property
    def registry_(self) -> dict[str, Any]:
        """scvi-tools' registry of the set-up (``setup_args``, ``field_registries``, ...)."""
        return self.adata_manager.registry

    @property
    def registry(self) -> dict[str, Any]:
        """The same as :attr:`registry_`."""
        return self.registry_

    @property
    def summary_stats(self) -> attrdict:
        """``n_cells``, ``n_vars``, ``n_batch``, ``n_labels``, ... of :attr:`adata`."""
        return self.adata_manager.summary_stats

    def view_anndata_setup(
        self, adata: Any | None = None, hide_state_registries: bool = False
    ) -> None:
        """Print the set-up of :attr:`adata` or of ``adata`` (set up with ``setup_anndata``,
        or checked against the model's set-up by one of its methods).

        Raises:
            ValueError: ``adata`` was never set up nor given to the model.
        """
        adata = self._adata if adata is None else adata
        uns = getattr(adata, "uns", {})
        if str(uns.get(UUID_KEY)) in self._known_uuids:
            setup = self.setup
        elif SETUP_KEY in uns:
            setup = AnnDataSetup.from_dict(uns[SETUP_KEY])
        else:
            raise ValueError(
                f"Given AnnData not set up with {type(self).__name__}.setup_anndata; cannot "
                "view its set-up."
            )
        AnnDataManager(adata, setup, type(self).__name__).view_registry(
            hide_state_registries=hide_state_registries
        )

    @staticmethod
    def view_setup_args(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the ``setup_anndata`` arguments of a model saved in ``dir_path``."""
        state = read_state(dir_path, prefix, what="single-cell model")
        setup = saved_setup(state)
        print(f"Setup via `{state['class']}.setup_anndata` with arguments:")
        for key, value in setup_args(setup).items():
            print(f"  {key}: {value!r}")

    def get_from_registry(self, adata: Any, registry_key: str) -> np.ndarray | pd.DataFrame | Any:
        """The registered data of one field of ``adata`` (see
        :meth:`AnnDataManager.get_from_registry`).

        Raises:
            ValueError: ``adata`` was never set up nor given to the model.
            KeyError: ``registry_key`` is not a registered field.
        """
        manager = cast(AnnDataManager, self.get_anndata_manager(adata, required=True))
        return manager.get_from_registry(registry_key)

    def data_registry(self, registry_key: str) -> np.ndarray | pd.DataFrame | Any:
        """The registered data of one field of :attr:`adata` (scvi-tools' model method)."""
        return self.adata_manager.get_from_registry(registry_key)

    def get_state_registry(self, registry_key: str) -> attrdict:
        """The state of one field (e.g. ``categorical_mapping`` of ``"batch"``)."""
        return self.adata_manager.get_state_registry(registry_key)

    def get_setup_arg(self, setup_arg: str) -> Any:
        """One ``setup_anndata`` argument (e.g. ``"batch_key"``).

        Raises:
            KeyError: Not an argument of ``setup_anndata`` (the arguments are named).
        """
        args = self.registry_["setup_args"]
        if setup_arg not in args:
            raise KeyError(f"{setup_arg!r} is not a setup argument; arguments: {sorted(args)}.")
        return args[setup_arg]

    def view_registry(self, hide_state_registries: bool = False) -> None:
        """Print the set-up of :attr:`adata` (arguments, summary statistics, fields)."""
        self.adata_manager.view_registry(hide_state_registries=hide_state_registries)

    def view_setup_method_args(self) -> None:
        """Print the ``setup_anndata`` arguments of :attr:`adata`."""
        print(f"Setup via `{type(self).__name__}.setup_anndata` with arguments:")
        for key, value in self.registry_["setup_args"].items():
            print(f"  {key}: {value!r}")

    def get_var_names(self, legacy_mudata_format: bool = False) -> np.ndarray:
        """The gene names of :attr:`adata`, as strings (``legacy_mudata_format`` is for
        MuData, which is not offered, and changes nothing here)."""
        del legacy_mudata_format
        return np.asarray(self._adata.var_names.astype(str))

    def transfer_fields(self, adata: Any, extend_categories: bool = False) -> Any:
        """Set ``adata`` up as :attr:`adata` is (the model's set-up, checked against it) and
        mark it as known to the model; returns ``adata``.

        Raises:
            NotImplementedError: ``extend_categories=True`` (new categories would need new
                embedding rows: scArches surgery, which is not offered).
            ValueError: ``adata`` does not fit the set-up (genes, columns, categories).
        """
        if extend_categories:
            raise NotImplementedError(
                "`extend_categories=True` is not offered: a new batch or label category "
                "needs new weights (scArches reference mapping); train on all cells instead."
            )
        self.setup.transfer(adata)
        self._register(adata)
        return adata

    @property
    def minified_data_type(self) -> None:
        """``None``: minified AnnData is not offered (see ``minify_adata``)."""
        return None

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` has run (scvi-tools' name; ``is_trained_`` as well)."""
        return self.is_trained_

    def _cell_data(self, adata: Any | None) -> CellData:
        adata = self._validate_adata(adata)
        if adata is self._adata:
            if self._data_cache is None or self._data_cache[0] != id(adata):
                self._data_cache = (id(adata), CellData(adata, self.setup))
            return self._data_cache[1]
        return CellData(adata, self.setup)

    def _minibatches(
        self,
        adata: Any | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
    ) -> Iterator[CellBatch]:
        """Minibatches of cells on the model's device (``dataloader`` wins if given)."""
        if dataloader is not None:
            for item in dataloader:
                cells = item if isinstance(item, CellBatch) else _batch_from_dict(item)
                yield cells.to(self.device)
            return
        data = self._cell_data(adata)
        idx = resolve_indices(indices, data.n_obs)
        for cells in data.minibatches(idx, batch_size or settings.batch_size):
            yield cells.to(self.device)

    def _n_cells(self, adata: Any | None, indices: Any) -> int:
        adata = self._validate_adata(adata)
        return len(resolve_indices(indices, adata.n_obs))
