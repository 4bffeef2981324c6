"""Read-only views of a model's AnnData set-up under scvi-tools' names.

scvi-tools users' scripts read the set-up through ``model.adata_manager`` (an
``AnnDataManager``), ``model.registry_`` and ``model.summary_stats``: the number of cells,
genes, batches and labels, the category mapping of a field, the registered arrays.
:class:`AnnDataManager` answers those reads from our :class:`~sbi_vi.singlecell.fields.
AnnDataSetup` — the same keys (:data:`REGISTRY_KEYS`), the same nesting of the registry
dict, the same arrays — but it is a view: registering fields, minifying or transferring
through it is not offered (set-up goes through ``setup_anndata``; a new AnnData is checked
when a method gets it).
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from sbi_vi.singlecell.fields import AnnDataSetup, get_counts

__all__ = ["REGISTRY_KEYS", "UUID_KEY", "AnnDataManager", "assign_uuid", "attrdict"]

UUID_KEY = "_scvi_uuid"
"""The ``adata.uns`` key of the identifier that lets a model recognise an AnnData."""


class _RegistryKeys(NamedTuple):
    X_KEY: str = "X"
    BATCH_KEY: str = "batch"
    LABELS_KEY: str = "labels"
    CAT_COVS_KEY: str = "extra_categorical_covs"
    CONT_COVS_KEY: str = "extra_continuous_covs"
    SIZE_FACTOR_KEY: str = "size_factor"


REGISTRY_KEYS = _RegistryKeys()
"""scvi-tools' names of the registered fields."""


class attrdict(dict):
    """A dict whose keys are also attributes (``summary_stats.n_batch``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"no entry {key!r}; entries: {sorted(self)}") from err

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return dict.__eq__(self, other)
        items = getattr(other, "items", None)  # other mapping types (scvi-tools' attrdict)
        return callable(items) and dict(self) == dict(items())

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]  # mutable, as dict


def assign_uuid(adata: Any, *, overwrite: bool = False) -> str:
    """The identifier in ``adata.uns["_scvi_uuid"]``, written first if missing."""
    if overwrite or UUID_KEY not in adata.uns:
        adata.uns[UUID_KEY] = str(uuid.uuid4())
    return str(adata.uns[UUID_KEY])


def setup_args(setup: AnnDataSetup) -> dict[str, Any]:
    return {
        "layer": setup.layer,
        "batch_key": setup.batch_key,
        "labels_key": setup.labels_key,
        "size_factor_key": setup.size_factor_key,
        "categorical_covariate_keys": list(setup.categorical_covariate_keys) or None,
        "continuous_covariate_keys": list(setup.continuous_covariate_keys) or None,
    }


def _categorical_field(name: str, key: str | None, categories: tuple[str, ...]) -> dict:
    """scvi-tools' registry entry of a categorical ``obs`` field (``batch``, ``labels``)."""
    stored = f"_scvi_{name}"
    return {
        "data_registry": {"attr_name": "obs", "attr_key": stored},
        "state_registry": {
            "categorical_mapping": np.asarray(categories, dtype=object),
            "original_key": key or stored,
        },
        "summary_stats": {f"n_{name}": len(categories)},
    }


class AnnDataManager:
    """One AnnData under a model's set-up, as scvi-tools' ``AnnDataManager`` shows it.

    Args:
        adata: The AnnData (already checked against ``setup``).
        setup: The model's set-up.
        model_name: The model class's name (for ``registry["model_name"]``).

    Example:
        >>> from sbi_vi.singlecell import SCVI, synthetic_counts
        >>> adata = synthetic_counts(30, 10, n_de_genes=2, n_batches=2, seed=0)
        >>> SCVI.setup_anndata(adata, batch_key="batch")
        >>> manager = SCVI(adata, n_hidden=8).adata_manager
        >>> manager.summary_stats.n_batch, manager.get_from_registry("batch").shape
        (2, (30, 1))
    """

    def __init__(self, adata: Any, setup: AnnDataSetup, model_name: str = "SCVI"):
        self._adata = adata
        self._setup = setup
        self._model_name = model_name

    @property
    def adata(self) -> Any:
        """The AnnData."""
        return self._adata

    @property
    def adata_uuid(self) -> str:
        """Its ``adata.uns["_scvi_uuid"]``."""
        return assign_uuid(self._adata)

    def _fields(self) -> dict[str, dict[str, Any]]:
        s = self._setup
        out: dict[str, dict[str, Any]] = {
            REGISTRY_KEYS.X_KEY: {
                "data_registry": {
                    "attr_name": "X" if s.layer is None else "layers",
                    "attr_key": s.layer,
                },
                "state_registry": {
                    "n_obs": int(self._adata.n_obs),
                    "n_vars": s.n_vars,
                    "column_names": np.asarray(s.var_names, dtype=object),
                },
                "summary_stats": {"n_cells": int(self._adata.n_obs), "n_vars": s.n_vars},
            },
            REGISTRY_KEYS.BATCH_KEY: _categorical_field("batch", s.batch_key, s.batch_categories),
            REGISTRY_KEYS.LABELS_KEY: _categorical_field(
                "labels", s.labels_key, s.labels_categories
            ),
        }
        if s.size_factor_key is not None:
            out[REGISTRY_KEYS.SIZE_FACTOR_KEY] = {
                "data_registry": {"attr_name": "obs", "attr_key": s.size_factor_key},
                "state_registry": {},
                "summary_stats": {},
            }
        if s.categorical_covariate_keys:
            out[REGISTRY_KEYS.CAT_COVS_KEY] = {
                "data_registry": {"attr_name": "obsm", "attr_key": "_scvi_extra_categorical_covs"},
                "state_registry": {
                    "mappings": {
                        k: np.asarray(s.covariate_categories[k], dtype=object)
                        for k in s.categorical_covariate_keys
                    },
                    "field_keys": list(s.categorical_covariate_keys),
                    "n_cats_per_key": list(s.n_cats_per_cov),
                },
                "summary_stats": {"n_extra_categorical_covs": len(s.categorical_covariate_keys)},
            }
        if s.continuous_covariate_keys:
            out[REGISTRY_KEYS.CONT_COVS_KEY] = {
                "data_registry": {"attr_name": "obsm", "attr_key": "_scvi_extra_continuous_covs"},
                "state_registry": {
                    "columns": np.asarray(s.continuous_covariate_keys, dtype=object)
                },
                "summary_stats": {"n_extra_continuous_covs": s.n_continuous_cov},
            }
        return out

    @property
    def registry(self) -> dict[str, Any]:
        """scvi-tools' registry dict: ``scvi_version``, ``model_name``, ``setup_args``,
        ``field_registries`` (per field: data, state and summary registries), ..."""
        from sbi_vi import __version__

        return {
            "scvi_version": f"sbi_vi {__version__}",
            "model_name": self._model_name,
            "setup_method_name": "setup_anndata",
            "setup_args": setup_args(self._setup),
            "field_registries": self._fields(),
            UUID_KEY: self.adata_uuid,
        }

    @property
    def summary_stats(self) -> attrdict:
        """``n_cells``, ``n_vars``, ``n_batch``, ``n_labels`` (and covariate counts)."""
        stats: dict[str, Any] = {}
        for entry in self._fields().values():
            stats.update(entry["summary_stats"])
        return attrdict(stats)

    @property
    def data_registry(self) -> attrdict:
        """Per field, where scvi-tools would read it (``attr_name``, ``attr_key``)."""
        return attrdict({k: attrdict(v["data_registry"]) for k, v in self._fields().items()})

    def get_state_registry(self, registry_key: str) -> attrdict:
        """The state of one field (e.g. ``categorical_mapping`` of ``"batch"``).

        Raises:
            KeyError: A field that is not registered (the registered ones are named).
        """
        return attrdict(self._entry(registry_key)["state_registry"])

    def _entry(self, registry_key: str) -> dict[str, Any]:
        fields = self._fields()
        if registry_key not in fields:
            raise KeyError(
                f"{registry_key!r} is not a registered field; registered: {sorted(fields)}."
            )
        return fields[registry_key]

    def get_from_registry(self, registry_key: str) -> np.ndarray | pd.DataFrame | Any:
        """The registered data of a field, as scvi-tools returns it.

        ``"X"``: the count matrix (dense, sparse or backed, as stored); ``"batch"`` /
        ``"labels"``: codes ``[n_cells, 1]``; ``"size_factor"``: ``[n_cells, 1]``;
        covariates: a DataFrame indexed by cell.
        """
        self._entry(registry_key)
        s, adata = self._setup, self._adata
        if registry_key == REGISTRY_KEYS.X_KEY:
            return get_counts(adata, s.layer)
        if registry_key == REGISTRY_KEYS.BATCH_KEY:
            return s.batch_codes(adata).reshape(-1, 1)
        if registry_key == REGISTRY_KEYS.LABELS_KEY:
            return s.labels_codes(adata).reshape(-1, 1)
        if registry_key == REGISTRY_KEYS.SIZE_FACTOR_KEY:
            return np.asarray(s.size_factors(adata)).reshape(-1, 1)
        if registry_key == REGISTRY_KEYS.CAT_COVS_KEY:
            return pd.DataFrame(
                s.covariate_codes(adata),
                index=adata.obs_names,
                columns=list(s.categorical_covariate_keys),
            )
        return pd.DataFrame(
            s.continuous_covariates(adata),
            index=adata.obs_names,
            columns=list(s.continuous_covariate_keys),
        )

    def view_registry(self, hide_state_registries: bool = False) -> None:
        """Print the set-up: arguments, summary statistics, fields (and their states)."""
        print(format_registry(self.registry, hide_state_registries=hide_state_registries))


def format_registry(registry: dict[str, Any], *, hide_state_registries: bool = False) -> str:
    """The text :meth:`AnnDataManager.view_registry` prints."""
    lines = [
        f"Anndata setup with {registry['scvi_version']}.",
        f"Setup via `{registry['model_name']}.setup_anndata` with arguments:",
    ]
    lines += [f"  {k}: {v!r}" for k, v in registry["setup_args"].items()]
    stats: dict[str, Any] = {}
    for entry in registry["field_registries"].values():
        stats.update(entry["summary_stats"])
    lines.append("Summary statistics:")
    lines += [f"  {k}: {v}" for k, v in stats.items()]
    lines.append("Data registry:")
    for key, entry in registry["field_registries"].items():
        where = entry["data_registry"]
        attr = (
            where["attr_name"]
            if where["attr_key"] is None
            else (f"adata.{where['attr_name']}[{where['attr_key']!r}]")
        )
        lines.append(f"  {key}: {attr}")
    if not hide_state_registries:
        for key, entry in registry["field_registries"].items():
            state = entry["state_registry"]
            mapping = state.get("categorical_mapping")
            if mapping is not None:
                lines.append(f"{key} state registry ({state['original_key']}):")
                lines += [f"  {code}: {name}" for code, name in enumerate(mapping)]
    return "\n".join(lines)
