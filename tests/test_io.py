"""The shared file helpers: one clear error for a bad file, naming the file and version."""

from __future__ import annotations

import pickle
import sys
import types

import pytest
import torch

from sbi_vi import __version__
from sbi_vi._io import load_object, load_torch_file, save_object, written_by


def _save(tmp_path, obj=None):
    path = tmp_path / "thing.pt"
    save_object(torch.arange(3.0) if obj is None else obj, path, what="Thing")
    return path


def test_round_trip_and_version(tmp_path):
    path = _save(tmp_path)
    assert written_by(path) == __version__
    out = load_object(path, what="Thing", expected_type=torch.Tensor)
    assert torch.equal(out, torch.arange(3.0))


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file_names_file_and_class(tmp_path, fraction):
    path = _save(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(fraction * len(data))])
    with pytest.raises(ValueError, match=r"thing\.pt' is not a valid Thing file") as info:
        load_torch_file(path, what="Thing")
    assert info.value.__cause__ is not None


def test_text_and_plain_pickle_are_refused(tmp_path):
    text = tmp_path / "text.pt"
    text.write_text("not a torch file at all")
    with pytest.raises(ValueError, match="not a valid Thing file"):
        load_torch_file(text, what="Thing")
    partial = tmp_path / "partial.pt"
    partial.write_bytes(pickle.dumps({"a": 1})[:6])
    with pytest.raises(ValueError, match="not a valid Thing file"):
        load_torch_file(partial, what="Thing")


def test_missing_file_stays_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "nope.pt", what="Thing")


def test_class_gone_names_the_version_that_wrote_it(tmp_path):
    module = types.ModuleType("sbi_vi_gone_module")

    class Gone:
        pass

    Gone.__module__ = module.__name__
    Gone.__qualname__ = "Gone"
    module.Gone = Gone
    sys.modules[module.__name__] = module
    try:
        path = _save(tmp_path, Gone())
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(ValueError, match=f"written by sbi_vi {__version__}"):
        load_torch_file(path, what="Thing")


def test_wrong_class_is_refused(tmp_path):
    path = _save(tmp_path)
    with pytest.raises(ValueError, match=r"holds a Tensor.*not a Thing"):
        load_object(path, what="Thing", expected_type=dict)


def test_bare_torch_save_still_loads(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"a": torch.ones(2)}, path)
    assert written_by(path) is None
    assert set(load_object(path, what="Thing", expected_type=dict)) == {"a"}
