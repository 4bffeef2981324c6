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

from sbi_vi._checks import check_positive_int, check_unknown_kwargs, seeded
from sbi_vi.singlecell.callbacks import EarlyStopping, LearningRateRecorder, adapt_callbacks
from sbi_vi.singlecell.fields import SETUP_KEY, AnnDataSetup, setup_anndata
from sbi_vi.singlecell.loader import CellBatch, CellData, resolve_indices
from sbi_vi.singlecell.module import VAE
from sbi_vi.singlecell.persistence import (
    adata_path,
    model_path,
    read_state,
    saved_setup,
    write_state,
)
from sbi_vi.singlecell.registry import (
    UUID_KEY,
    AnnDataManager,
    assign_uuid,
    attrdict,
    setup_args,
)
from sbi_vi.singlecell.settings import settings
from sbi_vi.singlecell.split import split_cells
from sbi_vi.singlecell.trainer import TrainerOptions, merge_kwargs
from sbi_vi.singlecell.training import TrainingPlan, train_module
from sbi_vi.vi.divergences import Divergence

__all__ = ["DEFAULT_BATCH_SIZE", "BaseSingleCellModel"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 128
"""The default of ``settings.batch_size`` (cells per forward pass when ``batch_size=None``)."""


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
        self.setup = AnnDataSetup.from_dict(record)
        self._known_uuids: set[str] = set()
        self._adata = adata
        self._register(adata)
        self.init_params_ = dict(init_params)
        self._data_cache: tuple[int, CellData] | None = None
        with seeded(settings.seed):  # the weights: reproducible under settings.seed
            self.module = self._build_module(**init_params)
        self.is_trained_ = False
        self.history_: dict[str, list[float]] = {}
        self.device = torch.device("cpu")
        self.train_indices = np.zeros(0, dtype=np.int64)
        self.validation_indices = np.zeros(0, dtype=np.int64)
        self.test_indices = np.zeros(0, dtype=np.int64)

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

    def _build_module(self, **init_params: Any) -> VAE:  # pragma: no cover - interface
        raise NotImplementedError

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
        self._known_uuids.add(assign_uuid(adata))

    def _validate_adata(self, adata: Any | None) -> Any:
        """``adata`` (checked against the model's set-up), or the model's own AnnData."""
        if adata is None:
            return self._adata
        if adata is not self._adata:
            self.setup.transfer(adata)
            self._register(adata)
        return adata

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
        uuid = getattr(adata, "uns", {}).get(UUID_KEY)
        if uuid is None or SETUP_KEY not in adata.uns:
            if required:
                raise ValueError(
                    f"Please set up your AnnData with {type(self).__name__}.setup_anndata first."
                )
            return None
        if str(uuid) not in self._known_uuids:
            if required:
                raise ValueError(
                    "This AnnData was set up but never given to this model; pass it to one of "
                    "the model's methods (`adata=`) or assign `model.adata = adata` first."
                )
            return None
        return AnnDataManager(adata, self.setup, type(self).__name__)

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
        """Print the set-up of :attr:`adata` or of ``adata``.

        Raises:
            ValueError: ``adata`` was never set up with ``setup_anndata``.
        """
        adata = self._adata if adata is None else adata
        if SETUP_KEY not in getattr(adata, "uns", {}):
            raise ValueError(
                f"Given AnnData not set up with {type(self).__name__}.setup_anndata; cannot "
                "view its set-up."
            )
        setup = AnnDataSetup.from_dict(adata.uns[SETUP_KEY])
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
        options = TrainerOptions.from_kwargs(trainer_config, trainer_kwargs)
        plan = TrainingPlan.from_kwargs(merge_kwargs(plan_config, plan_kwargs, name="plan"))
        split_kwargs = dict(datasplitter_kwargs or {})
        check_unknown_kwargs(
            "`datasplitter_kwargs`", split_kwargs, ("drop_last", "external_indexing")
        )
        drop_last = bool(split_kwargs.get("drop_last", False))
        batch_size = check_positive_int("batch_size", batch_size)
        n_cells = self._adata.n_obs
        if max_epochs is None:
            max_epochs = int(min(round((20000 / n_cells) * 400), 400))
        if seed is None:
            seed = settings.seed
        if seed is None:
            seed = int(torch.randint(2**31 - 1, (1,)).item())  # honours torch.manual_seed
        seed = check_positive_int("seed", seed, allow_zero=True)
        split = split_cells(
            n_cells,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            batch_size=batch_size,
            drop_last=drop_last,
            external_indexing=split_kwargs.get("external_indexing"),
            seed=seed,
        )
        if len(split.train) % batch_size == 1 and not drop_last and _has_batch_norm(self.module):
            raise ValueError(
                f"The last training minibatch would hold 1 cell ({len(split.train)} training "
                f"cells, `batch_size={batch_size}`), which batch normalisation cannot train on; "
                "pass `datasplitter_kwargs={'drop_last': True}` or change `batch_size` or "
                "`train_size`."
            )
        callbacks = adapt_callbacks(options.callbacks)
        if options.learning_rate_monitor:
            callbacks.append(LearningRateRecorder())
        if options.early_stopping or early_stopping:
            callbacks.append(
                EarlyStopping(
                    monitor=options.early_stopping_monitor,
                    patience=options.early_stopping_patience,
                    min_delta=options.early_stopping_min_delta,
                    mode=options.early_stopping_mode,
                    warmup_epochs=options.early_stopping_warmup_epochs,
                )
            )
        validate_every = _validation_frequency(options, plan, callbacks)
        if (
            validate_every is not None
            and len(split.validation) == 0
            and (options.check_val_every_n_epoch is None)
        ):
            raise ValueError(
                "Early stopping or the plateau scheduler watches a validation metric, but the "
                "split leaves no validation cells; use `train_size` < 1."
            )
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
                max_epochs=check_positive_int("max_epochs", max_epochs),
                batch_size=batch_size,
                plan=plan,
                validate_every=validate_every,
                callbacks=callbacks,
                history=self.history_ if self.is_trained_ else None,
                show_progress_bar=show_progress_bar and options.enable_progress_bar,
                seed=seed + 2,
                drop_last=drop_last,
                clip_value=options.gradient_clip_val or None,
                max_steps=options.max_steps,
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
            index = epochs if len(values) == len(epochs) else stamps
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
        dir_path = os.fspath(dir_path)
        if os.path.exists(dir_path) and not overwrite:
            raise ValueError(
                f"{dir_path!r} already exists; pass `overwrite=True` to write into it."
            )
        os.makedirs(dir_path, exist_ok=True)
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
        write_state(state, dir_path, prefix)
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
    ) -> BaseSingleCellModel:
        """Load a model written by :meth:`save`; ``adata=None`` reads the saved AnnData.

        Raises:
            FileNotFoundError: No saved model in ``dir_path``.
            ValueError: A truncated or corrupted file, a file saved by another model class,
                no saved AnnData and none given, or ``adata`` does not match the model's
                genes / categories.
        """
        if backup_url is not None:
            raise ValueError("`backup_url` is not offered: sbi_vi does not download files.")
        _check_devices(device)
        what = f"{cls.__name__} model"
        state = read_state(dir_path, prefix, what=what)
        if state["class"] != cls.__name__:
            raise ValueError(
                f"{model_path(dir_path, prefix)!r} holds a {state['class']} model, not a "
                f"{cls.__name__}; load it with {state['class']}.load."
            )
        setup = saved_setup(state)
        if adata is None:
            path = adata_path(dir_path, prefix)
            if not os.path.exists(path):
                raise ValueError(
                    f"{os.fspath(dir_path)!r} holds no AnnData (saved without "
                    "`save_anndata=True`); pass `adata`."
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
        self._adata = adata
        self._known_uuids = set()
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


def _validation_frequency(
    options: TrainerOptions, plan: TrainingPlan, callbacks: list[Any]
) -> int | None:
    """Validate every this many epochs: the user's choice, else every epoch when early
    stopping or the plateau scheduler watches a validation metric, else never."""
    if options.check_val_every_n_epoch is not None:
        return options.check_val_every_n_epoch
    watched = [cb.monitor for cb in callbacks if isinstance(cb, EarlyStopping)]
    if plan.reduce_lr_on_plateau:
        watched.append(plan.lr_scheduler_metric)
    if any(key.endswith("_validation") or key == "validation_loss" for key in watched):
        return 1
    return None


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
