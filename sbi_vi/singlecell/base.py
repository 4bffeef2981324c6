"""The AnnData-facing model base: set-up, data access, training, persistence.

:class:`BaseSingleCellModel` declares everything the method mixins
(:mod:`~sbi_vi.singlecell.vaemixin`, :mod:`~sbi_vi.singlecell.expression`,
:mod:`~sbi_vi.singlecell.differential`) read: ``module``, ``setup``, ``adata``, ``device``,
and :meth:`_minibatches`, which turns ``(adata, indices, batch_size, dataloader)`` into
minibatches of cells on the model's device. Nothing else is shared between them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sbi_vi.singlecell.fields import SETUP_KEY, AnnDataSetup, setup_anndata
from sbi_vi.singlecell.loader import CellBatch, CellData, resolve_indices
from sbi_vi.singlecell.module import VAE
from sbi_vi.singlecell.training import TrainingPlan, train_module
from sbi_vi.vi.divergences import Divergence

__all__ = ["DEFAULT_BATCH_SIZE", "BaseSingleCellModel"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 128
"""Cells per forward pass when ``batch_size=None`` (scvi-tools' ``settings.batch_size``)."""

_MODEL_FILE = "model.pt"
_ADATA_FILE = "adata.h5ad"


def _resolve_device(accelerator: str) -> torch.device:
    if accelerator in ("auto",):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"`accelerator={accelerator!r}` but no CUDA device is available.")
        return torch.device("cuda")
    raise ValueError(f"`accelerator` must be 'auto', 'cpu' or 'gpu', got {accelerator!r}.")


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


class BaseSingleCellModel:
    """What every single-cell model has: its AnnData set-up, module, training, files.

    Subclasses implement :meth:`_build_module` (module from the set-up and the model's
    ``init_params``).
    """

    module: VAE
    setup: AnnDataSetup

    def __init__(self, adata: Any, **init_params: Any):
        record = getattr(adata, "uns", {}).get(SETUP_KEY)
        if record is None:
            raise ValueError(
                f"`adata` was not set up; call `{type(self).__name__}.setup_anndata(adata, ...)` "
                "first."
            )
        self.adata = adata
        self.setup = AnnDataSetup.from_dict(record)
        self.init_params_ = dict(init_params)
        self._data_cache: tuple[int, CellData] | None = None
        self.module = self._build_module(**init_params)
        self.is_trained_ = False
        self.history_: dict[str, list[float]] = {}
        self.device = torch.device("cpu")
        self.train_indices = np.zeros(0, dtype=np.int64)
        self.validation_indices = np.zeros(0, dtype=np.int64)

    # -- set-up and data ---------------------------------------------------------------

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
    ) -> None:
        """Declare the fields of ``adata`` the model reads (see
        :func:`sbi_vi.singlecell.fields.setup_anndata`)."""
        setup_anndata(
            adata,
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            size_factor_key=size_factor_key,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
        )

    def _build_module(self, **init_params: Any) -> VAE:  # pragma: no cover - interface
        raise NotImplementedError

    def _validate_adata(self, adata: Any | None) -> Any:
        """``adata`` (checked against the model's set-up), or the model's own AnnData."""
        if adata is None:
            return self.adata
        self.setup.transfer(adata)
        return adata

    def _cell_data(self, adata: Any | None) -> CellData:
        adata = self._validate_adata(adata)
        if adata is self.adata:
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
        for cells in data.minibatches(idx, batch_size or DEFAULT_BATCH_SIZE):
            yield cells.to(self.device)

    def _n_cells(self, adata: Any | None, indices: Any) -> int:
        adata = self._validate_adata(adata)
        return len(resolve_indices(indices, adata.n_obs))

    # -- training ----------------------------------------------------------------------

    def _divergence(self) -> Divergence:  # pragma: no cover - interface
        raise NotImplementedError

    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: Any = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int = 128,
        early_stopping: bool = False,
        early_stopping_patience: int = 45,
        early_stopping_monitor: str = "elbo_validation",
        plan_kwargs: dict[str, Any] | None = None,
        show_progress_bar: bool = True,
        seed: int | None = None,
    ) -> None:
        """Train the model (scvi-tools' ``train``).

        Args:
            max_epochs: Passes over the training cells; by default
                ``min(round(20000 / n_cells * 400), 400)`` (scvi-tools' heuristic).
            accelerator: ``"auto"`` (a GPU when present), ``"cpu"`` or ``"gpu"``.
            devices: Accepted for compatibility (one device is used).
            train_size: Fraction of cells to train on; ``1.0`` trains on every cell with
                no validation split.
            validation_size: Fraction held out for validation (default: the rest).
            shuffle_set_split: Split at random (else the first cells train).
            batch_size: Cells per step.
            early_stopping: Stop when ``early_stopping_monitor`` has not improved for
                ``early_stopping_patience`` epochs, restoring the best epoch's weights.
            early_stopping_patience: Those epochs.
            early_stopping_monitor: A validation metric of :attr:`history`.
            plan_kwargs: Training-plan keys (``lr``, ``weight_decay``, ``eps``,
                ``n_epochs_kl_warmup``, ``n_steps_kl_warmup``, ``reduce_lr_on_plateau``,
                ...; see :class:`~sbi_vi.singlecell.training.TrainingPlan`).
            show_progress_bar: Show a progress bar.
            seed: Seed of the split and the minibatch order (``None``: torch's generator).

        Raises:
            ValueError: Sizes outside (0, 1], a monitor without validation cells, ...
        """
        del devices
        n_cells = self.adata.n_obs
        if max_epochs is None:
            max_epochs = int(min(round((20000 / n_cells) * 400), 400))
        if not (isinstance(train_size, int | float) and 0.0 < float(train_size) <= 1.0):
            raise ValueError(f"`train_size` must lie in (0, 1], got {train_size!r}.")
        if validation_size is not None and not (
            0.0 <= float(validation_size) <= 1.0 - float(train_size) + 1e-9
        ):
            raise ValueError(
                f"`validation_size` must lie in [0, 1 - train_size], got {validation_size!r}."
            )
        plan = TrainingPlan.from_kwargs(plan_kwargs)
        device = _resolve_device(accelerator)
        self.to_device(device)
        generator = torch.Generator()
        split_seed = int(torch.randint(2**62, (1,)).item()) if seed is None else int(seed)
        generator.manual_seed(split_seed)
        order = (
            torch.randperm(n_cells, generator=generator).numpy()
            if shuffle_set_split
            else np.arange(n_cells)
        )
        n_train = int(np.ceil(float(train_size) * n_cells))
        n_val = n_cells - n_train  # scvi-tools: the rest, unless validation_size is given
        if validation_size is not None:
            n_val = min(int(np.floor(float(validation_size) * n_cells)), n_val)
        if n_train < 2:
            raise ValueError(
                f"`train_size`={train_size} leaves {n_train} training cell(s) of {n_cells}; "
                "batch normalisation needs at least 2."
            )
        self.train_indices = np.sort(order[:n_train])
        self.validation_indices = np.sort(order[n_train : n_train + n_val])
        data = _DeviceData(self._cell_data(None), device)
        self.history_ = train_module(
            self.module,
            data,  # type: ignore[arg-type]
            self.train_indices,
            self.validation_indices if n_val else None,
            self._divergence(),
            max_epochs=max_epochs,
            batch_size=batch_size,
            plan=plan,
            early_stopping=early_stopping,
            early_stopping_monitor=early_stopping_monitor,
            early_stopping_patience=early_stopping_patience,
            history=self.history_ if self.is_trained_ else None,
            show_progress_bar=show_progress_bar,
            seed=split_seed + 1,
        )
        self.is_trained_ = True

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """Per-epoch training and validation metrics, one DataFrame per key (indexed by
        epoch), as scvi-tools' ``history``."""
        epochs = self.history_.get("epoch", [])
        index = pd.Index(np.asarray(epochs, dtype=int), name="epoch")
        return {
            key: pd.DataFrame({key: values}, index=index)
            for key, values in self.history_.items()
            if key != "epoch"
        }

    def to_device(self, device: str | torch.device) -> None:
        """Move the module to ``device``."""
        self.device = torch.device(device)
        self.module.to(self.device)

    # -- persistence -------------------------------------------------------------------

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
    ) -> None:
        """Write the model (weights, settings, set-up, history) to ``dir_path``.

        Raises:
            ValueError: If ``dir_path`` exists and ``overwrite`` is False.
        """
        dir_path = os.fspath(dir_path)
        if os.path.exists(dir_path) and not overwrite:
            raise ValueError(
                f"{dir_path!r} already exists; pass `overwrite=True` to write into it."
            )
        os.makedirs(dir_path, exist_ok=True)
        prefix = prefix or ""
        state = {
            "class": type(self).__name__,
            "module_state": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "init_params": _plain(self.init_params_),
            "module_extra": self._module_extra(),
            "setup": json.dumps(self.setup.to_dict()),
            "history": self.history_,
            "is_trained": self.is_trained_,
            "train_indices": self.train_indices,
            "validation_indices": self.validation_indices,
        }
        torch.save(state, os.path.join(dir_path, prefix + _MODEL_FILE))
        if save_anndata:
            self.adata.write_h5ad(os.path.join(dir_path, prefix + _ADATA_FILE))

    def _module_extra(self) -> dict[str, Any]:
        """Module constructor arguments computed from the data (e.g. library priors)."""
        return {}

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: Any | None = None,
        accelerator: str = "auto",
        prefix: str | None = None,
    ) -> BaseSingleCellModel:
        """Load a model written by :meth:`save`; ``adata=None`` reads the saved AnnData.

        Raises:
            ValueError: No saved AnnData and none given, or ``adata`` does not match the
                model's genes / categories.
        """
        dir_path = os.fspath(dir_path)
        prefix = prefix or ""
        state = torch.load(
            os.path.join(dir_path, prefix + _MODEL_FILE), map_location="cpu", weights_only=False
        )
        setup = AnnDataSetup.from_dict(json.loads(state["setup"]))
        if adata is None:
            path = os.path.join(dir_path, prefix + _ADATA_FILE)
            if not os.path.exists(path):
                raise ValueError(
                    f"{dir_path!r} holds no AnnData (saved without `save_anndata=True`); "
                    "pass `adata`."
                )
            import anndata

            adata = anndata.read_h5ad(path)
        setup.transfer(adata)
        adata.uns[SETUP_KEY] = setup.to_dict()
        model = cls.__new__(cls)
        model._restore(adata, setup, state)
        model.to_device(_resolve_device(accelerator))
        return model

    def _restore(self, adata: Any, setup: AnnDataSetup, state: dict[str, Any]) -> None:
        self.adata = adata
        self.setup = setup
        self.init_params_ = dict(state["init_params"])
        self._data_cache = None
        self.module = self._build_module(**self.init_params_, **state["module_extra"])
        self.module.load_state_dict(state["module_state"])
        self.module.eval()
        self.is_trained_ = bool(state["is_trained"])
        self.history_ = copy.deepcopy(state["history"])
        self.device = torch.device("cpu")
        self.train_indices = np.asarray(state["train_indices"])
        self.validation_indices = np.asarray(state["validation_indices"])

    def __repr__(self) -> str:
        status = "trained" if self.is_trained_ else "not trained"
        return (
            f"{type(self).__name__}({self.adata.n_obs} cells × {self.setup.n_vars} genes, "
            f"{self.setup.n_batch} batches, {status})"
        )


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in params.items()}


class _DeviceData:
    """A :class:`CellData` whose minibatches arrive on ``device``."""

    def __init__(self, data: CellData, device: torch.device):
        self._data = data
        self._device = device

    def minibatches(self, *args: Any, **kwargs: Any) -> Iterator[CellBatch]:
        for cells in self._data.minibatches(*args, **kwargs):
            yield cells if self._device.type == "cpu" else cells.to(self._device)
