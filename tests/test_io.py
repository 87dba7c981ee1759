import pytest
import torch

from symaudit._io import atomic_path, atomic_torch_save, atomic_write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_torch_save_round_trip_into_new_directory(tmp_path):
    target = tmp_path / "sub" / "x.pt"
    atomic_torch_save({"x": torch.arange(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))
