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
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sbi_vi._checks import seeded
from sbi_vi.singlecell.anndata_model import AnnDataModel
from sbi_vi.singlecell.fields import AnnDataSetup
from sbi_vi.singlecell.loader import CellBatch, CellData
from sbi_vi.singlecell.module import VAE
from sbi_vi.singlecell.persistence import (
    adata_path,
    read_model,
    write_model,
)
from sbi_vi.singlecell.refusals import ScviToolsRefusals
from sbi_vi.singlecell.settings import settings
from sbi_vi.singlecell.trainer import TrainerOptions, merge_kwargs, resolve_training
from sbi_vi.singlecell.training import TrainingPlan, train_module
from sbi_vi.vi.divergences import Divergence

__all__ = ["BaseSingleCellModel"]

logger = logging.getLogger(__name__)


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


class BaseSingleCellModel(ScviToolsRefusals, AnnDataModel):
    """What every single-cell model has: its AnnData (:class:`AnnDataModel`), module,
    training and files.

    Subclasses implement :meth:`_build_module` (module from the set-up and the model's
    ``init_params``).
    """

    module: VAE

    def __init__(self, adata: Any, **init_params: Any):
        super().__init__(adata)
        self.init_params_ = dict(init_params)
        self.run_name_ = f"run_{datetime.now():%Y-%m-%d_%H-%M-%S}"
        self.run_id_ = ""
        with seeded(settings.seed):  # the weights: reproducible under settings.seed
            self.module = self._build_module(**init_params)
        self.is_trained_ = False
        self.history_: dict[str, list[float]] = {}
        self.train_indices = np.zeros(0, dtype=np.int64)
        self.validation_indices = np.zeros(0, dtype=np.int64)
        self.test_indices = np.zeros(0, dtype=np.int64)

    def _build_module(self, **init_params: Any) -> VAE:  # pragma: no cover - interface
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------

    def _divergence(self) -> Divergence:  # pragma: no cover - interface
        raise NotImplementedError

    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: Any = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        batch_size: int = 128,
        early_stopping: bool = False,
        datasplitter_kwargs: dict[str, Any] | None = None,
        plan_config: Any = None,
        plan_kwargs: dict[str, Any] | None = None,
        datamodule: Any = None,
        trainer_config: Any = None,
        *,
        show_progress_bar: bool = True,
        seed: int | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train the model (scvi-tools 1.5's ``train``, same arguments and defaults).

        Args:
            max_epochs: Passes over the training cells; by default
                ``min(round(20000 / n_cells * 400), 400)`` (scvi-tools' heuristic).
            accelerator: ``"auto"`` (a GPU when present), ``"cpu"`` or ``"gpu"``.
            devices: One device (``"auto"``, ``1``, ``[0]``, ...).
            train_size: Fraction of cells to train on (``None``: 0.9, moving a training
                minibatch of fewer than 3 cells to validation); see
                :func:`~sbi_vi.singlecell.split.split_cells`.
            validation_size: Fraction held out for validation (default: the rest); a rest
                beyond both is the test set (``model.test_indices``).
            shuffle_set_split: Split at random (seeded by ``seed`` / ``settings.seed``).
            load_sparse_tensor: Accepted (minibatches are densified row by row anyway).
            batch_size: Cells per step.
            early_stopping: Stop when ``early_stopping_monitor`` has not improved by
                ``early_stopping_min_delta`` for ``early_stopping_patience`` validation
                checks, and restore the best epoch's weights.
            datasplitter_kwargs: ``drop_last`` (drop the last incomplete minibatch of every
                epoch) and ``external_indexing`` (``[train, validation, test]`` positions).
            plan_config: A mapping or config (``to_kwargs()``) of training-plan keys,
                updated by ``plan_kwargs``.
            plan_kwargs: Training-plan keys (``lr`` — 0 allowed —, ``weight_decay``,
                ``eps``, ``optimizer``, ``optimizer_creator``, ``n_epochs_kl_warmup``,
                ``n_steps_kl_warmup``, ``reduce_lr_on_plateau``, ``update_only_decoder``,
                ...; see :class:`~sbi_vi.singlecell.training.TrainingPlan`).
            datamodule: Not offered (``None`` only).
            trainer_config: A mapping or config of trainer options, updated by
                ``**trainer_kwargs``.
            show_progress_bar: Show a progress bar (with ``enable_progress_bar``).
            seed: Seed of the split, the minibatch order and the training noise
                (``None``: ``settings.seed``, else torch's global generator).
            **trainer_kwargs: scvi-tools' trainer options: ``check_val_every_n_epoch``,
                ``early_stopping_monitor``, ``early_stopping_patience``,
                ``early_stopping_min_delta``, ``early_stopping_warmup_epochs``,
                ``early_stopping_mode``, ``enable_progress_bar``, ``callbacks``,
                ``learning_rate_monitor``, ``gradient_clip_val``, ``max_steps``, ... (see
                :class:`~sbi_vi.singlecell.trainer.TrainerOptions`).

        Raises:
            TypeError: An unknown keyword argument (the accepted ones are listed).
            ValueError: Sizes out of range, a monitor without validation cells, a last
                training minibatch of one cell under batch normalisation without
                ``drop_last``, an option that is not offered, ...
        """
        if datamodule is not None:
            raise ValueError(
                "`datamodule` is not offered: the model trains on its AnnData; choose the cells "
                "with `datasplitter_kwargs={'external_indexing': [train, validation, test]}`."
            )
        del load_sparse_tensor
        _check_devices(devices)
        n_cells = self._adata.n_obs
        run = resolve_training(
            n_cells,
            max_epochs=max_epochs,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            batch_size=batch_size,
            early_stopping=early_stopping,
            datasplitter_kwargs=datasplitter_kwargs,
            plan=TrainingPlan.from_kwargs(merge_kwargs(plan_config, plan_kwargs, name="plan")),
            options=TrainerOptions.from_kwargs(trainer_config, trainer_kwargs),
            seed=settings.seed if seed is None else seed,
            batch_norm=_has_batch_norm(self.module),
        )
        split, seed = run.split, run.seed
        device = _resolve_device(accelerator)
        self.to_device(device)
        data = _DeviceData(self._cell_data(None), device)
        self.train_indices, self.validation_indices = split.train, split.validation
        self.test_indices = split.test
        with seeded(seed + 1):  # training noise (particles, dropout)
            self.history_ = train_module(
                self.module,
                data,  # type: ignore[arg-type]
                split.train,
                split.validation if len(split.validation) else None,
                self._divergence(),
                max_epochs=run.max_epochs,
                batch_size=run.batch_size,
                plan=run.plan,
                validate_every=run.validate_every,
                callbacks=run.callbacks,
                history=self.history_ if self.is_trained_ else None,
                show_progress_bar=show_progress_bar and run.options.enable_progress_bar,
                seed=seed + 2,
                drop_last=run.drop_last,
                clip_value=run.options.gradient_clip_val or None,
                max_steps=run.options.max_steps,
            )
        self.is_trained_ = True

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """Per-epoch training and validation metrics, one DataFrame per key (indexed by
        epoch; validation metrics at the epochs they were computed), as scvi-tools'."""
        epochs = self.history_.get("epoch", [])
        stamps = self.history_.get("validation_epoch", [])
        out = {}
        for key, values in self.history_.items():
            if key in ("epoch", "validation_epoch"):
                continue
            if len(values) == len(epochs):
                index = epochs
            elif len(values) == len(stamps):
                index = stamps
            else:  # a key that began in a later train() call (e.g. a new callback's)
                index = epochs[len(epochs) - len(values) :]
            out[key] = pd.DataFrame(
                {key: values}, index=pd.Index(np.asarray(index, dtype=int), name="epoch")
            )
        return out

    def to_device(self, device: str | torch.device) -> None:
        """Move the module to ``device``."""
        self.device = torch.device(device)
        self.module.to(self.device)

    # -- copies and persistence ---------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data_cache"] = None  # tensors of the data, rebuilt on demand
        return state

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        save_kwargs: dict[str, Any] | None = None,
        **anndata_write_kwargs: Any,
    ) -> None:
        """Write the model (weights, settings, set-up, history, split) to ``dir_path``.

        Args:
            dir_path: Directory to write into (created).
            prefix: Prefix of the file names.
            overwrite: Write into an existing directory.
            save_anndata: Also write the AnnData (``<prefix>adata.h5ad``).
            save_kwargs: Accepted for compatibility (no options).
            **anndata_write_kwargs: Passed to ``AnnData.write_h5ad``.

        Raises:
            ValueError: If ``dir_path`` exists and ``overwrite`` is False.
        """
        if save_kwargs:
            raise TypeError(f"`save_kwargs` has no options here, got {sorted(save_kwargs)}.")
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
            "test_indices": self.test_indices,
        }
        write_model(state, dir_path, prefix, overwrite=overwrite)
        if save_anndata:
            self._adata.write_h5ad(adata_path(dir_path, prefix), **anndata_write_kwargs)

    def _module_extra(self) -> dict[str, Any]:
        """Module constructor arguments computed from the data (e.g. library priors)."""
        return {}

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: Any | None = None,
        accelerator: str = "auto",
        device: Any = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
        datamodule: Any = None,
        allowed_classes_names_list: list[str] | None = None,
    ) -> BaseSingleCellModel:
        """Load a model written by :meth:`save`; ``adata=None`` reads the saved AnnData.

        ``allowed_classes_names_list`` (scvi-tools'), if given, must name this class: a file
        is loaded only by the class that saved it.

        Raises:
            FileNotFoundError: No saved model in ``dir_path``.
            ValueError: A truncated or corrupted file, a file saved by another model class,
                no saved AnnData and none given, ``adata`` does not match the model's
                genes / categories, ``backup_url`` or ``datamodule`` (not offered), or an
                ``allowed_classes_names_list`` without this class.
        """
        if backup_url is not None:
            raise ValueError("`backup_url` is not offered: sbi_vi does not download files.")
        if datamodule is not None:
            raise ValueError(
                "`datamodule` is not offered: a loaded model reads its AnnData (`adata=`)."
            )
        if allowed_classes_names_list is not None and cls.__name__ not in list(
            allowed_classes_names_list
        ):
            raise ValueError(
                f"`allowed_classes_names_list={allowed_classes_names_list!r}` does not name "
                f"{cls.__name__}, the class being loaded."
            )
        _check_devices(device)
        state, setup, adata = read_model(cls.__name__, dir_path, prefix, adata)
        model = cls.__new__(cls)
        model._restore(adata, setup, state)
        model.to_device(_resolve_device(accelerator))
        return model

    def _restore(self, adata: Any, setup: AnnDataSetup, state: dict[str, Any]) -> None:
        self._adata = adata
        self._known_uuids = {}
        self._register(adata)
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
        self.test_indices = np.asarray(state.get("test_indices", np.zeros(0, dtype=np.int64)))

    @property
    def id(self) -> str:
        """An identifier of this model instance (a UUID, as scvi-tools')."""
        if not getattr(self, "id_", ""):
            self.id_ = str(uuid.uuid4())
        return self.id_

    @property
    def get_normalized_function_name(self) -> str:
        """The name of the method that gives normalised expression (scvi-tools' property)."""
        return "get_normalized_expression"

    @property
    def summary_string(self) -> str:
        """What scvi-tools prints for the model: its parameters and training status."""
        params = ", ".join(
            f"{k}: {v}" for k, v in self.init_params_.items() if not isinstance(v, dict)
        )
        status = "Trained" if self.is_trained_ else "Not Trained"
        return (
            f"{type(self).__name__} model with the following parameters: \n{params}.\n"
            f"Training status: {status}\nModel's adata is minified?: False"
        )

    @property
    def run_name(self) -> str:
        """A name of the model's run (scvi-tools' MLflow tag; not logged anywhere here)."""
        return getattr(self, "run_name_", "")

    @run_name.setter
    def run_name(self, value: str) -> None:
        self.run_name_ = str(value)

    @property
    def run_id(self) -> str:
        """An identifier of the model's run (scvi-tools' MLflow id; empty here)."""
        return getattr(self, "run_id_", "")

    @run_id.setter
    def run_id(self, value: str) -> None:
        self.run_id_ = str(value)

    def __repr__(self) -> str:
        status = "trained" if self.is_trained_ else "not trained"
        return (
            f"{type(self).__name__}({self._adata.n_obs} cells × {self.setup.n_vars} genes, "
            f"{self.setup.n_batch} batches, {status})"
        )


def _has_batch_norm(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _check_devices(devices: Any) -> None:
    """One device only (``"auto"``, ``1``, ``"1"``, ``[i]``, ``-1`` on a one-device host)."""
    if devices in ("auto", None, 1, "1", -1, "-1") or (
        isinstance(devices, list | tuple) and len(devices) == 1
    ):
        return
    raise ValueError(
        f"`devices={devices!r}` is not offered: sbi_vi.singlecell trains on one device."
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
