"""Host helpers shared by the service, the benchmarks and training: CPUs and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.host import atomic_path, atomic_write_bytes, atomic_write_text, available_cpus


def test_available_cpus_is_positive() -> None:
    assert available_cpus() >= 1


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    atomic_write_text(tmp_path / "state.json", "{}\n")
    assert (tmp_path / "state.json").read_text() == "{}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "best.keras"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".keras"  # writers that pick the format by suffix still can
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["best.keras"]
