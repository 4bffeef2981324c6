"""Files of a saved single-cell model: what ``save`` writes and ``load`` reads back.

One ``<prefix>model.pt`` holds the weights, constructor arguments, set-up, history and
split (and the sbi_vi version that wrote it); ``<prefix>adata.h5ad`` optionally holds the
AnnData. Reading goes through :func:`sbi_vi._io.load_torch_file`, so a truncated, corrupted
or foreign file is one clear ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sbi_vi._io import VERSION_KEY, _version, load_torch_file
from sbi_vi.singlecell.fields import SETUP_KEY, AnnDataSetup

__all__ = ["ADATA_FILE", "MODEL_FILE", "read_model", "read_state", "write_model"]

MODEL_FILE = "model.pt"
ADATA_FILE = "adata.h5ad"
_REQUIRED = ("class", "module_state", "init_params", "setup", "history", "is_trained")


def model_path(dir_path: str | os.PathLike, prefix: str | None) -> str:
    return os.path.join(os.fspath(dir_path), (prefix or "") + MODEL_FILE)


def adata_path(dir_path: str | os.PathLike, prefix: str | None) -> str:
    return os.path.join(os.fspath(dir_path), (prefix or "") + ADATA_FILE)


def write_model(
    state: dict[str, Any], dir_path: str | os.PathLike, prefix: str | None, *, overwrite: bool
) -> None:
    """Write ``state`` (with the sbi_vi version) to ``dir_path/<prefix>model.pt``.

    Raises:
        ValueError: If ``dir_path`` exists and ``overwrite`` is False.
    """
    import torch

    dir_path = os.fspath(dir_path)
    if os.path.exists(dir_path) and not overwrite:
        raise ValueError(f"{dir_path!r} already exists; pass `overwrite=True` to write into it.")
    os.makedirs(dir_path, exist_ok=True)
    torch.save({**state, VERSION_KEY: _version()}, model_path(dir_path, prefix))


def read_model(
    class_name: str, dir_path: str | os.PathLike, prefix: str | None, adata: Any | None
) -> tuple[dict[str, Any], AnnDataSetup, Any]:
    """The saved state, its set-up, and the AnnData checked against it (``adata``, or the
    saved one when ``None``) for loading a ``class_name`` model.

    Raises:
        FileNotFoundError: No saved model in ``dir_path``.
        ValueError: A truncated, corrupted or foreign file, another model class, no saved
            AnnData and none given, or an AnnData that does not match the set-up.
    """
    state = read_state(dir_path, prefix, what=f"{class_name} model")
    if state["class"] != class_name:
        raise ValueError(
            f"{model_path(dir_path, prefix)!r} holds a {state['class']} model, not a "
            f"{class_name}; load it with {state['class']}.load."
        )
    setup = saved_setup(state)
    if adata is None:
        path = adata_path(dir_path, prefix)
        if not os.path.exists(path):
            raise ValueError(
                f"{os.fspath(dir_path)!r} holds no AnnData (saved without `save_anndata=True`); "
                "pass `adata`."
            )
        import anndata

        adata = anndata.read_h5ad(path)
    setup.transfer(adata)
    adata.uns[SETUP_KEY] = setup.to_dict()
    return state, setup, adata


def read_state(dir_path: str | os.PathLike, prefix: str | None, *, what: str) -> dict[str, Any]:
    """The saved state of a ``what`` model in ``dir_path``.

    Raises:
        FileNotFoundError: No ``<prefix>model.pt`` in ``dir_path`` (naming both).
        ValueError: The file is not a valid save of a ``what`` model (unreadable, or a
            readable file that lacks the model's entries).
    """
    path = model_path(dir_path, prefix)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{os.fspath(dir_path)!r} holds no saved model: {path!r} does not exist"
            + (" (is the `prefix` right?)." if prefix else ".")
        )
    state = load_torch_file(path, what=what, map_location="cpu")
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path!r} is not a valid {what} save: it lacks the model's entries (found {found})."
        )
    return state


def saved_setup(state: dict[str, Any]) -> AnnDataSetup:
    """The :class:`AnnDataSetup` recorded in a saved state."""
    return AnnDataSetup.from_dict(json.loads(state["setup"]))
