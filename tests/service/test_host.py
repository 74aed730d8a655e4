"""Host helpers shared by the service, the benchmarks and training: CPUs, malloc arenas and
atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.host import (
    ARENA_ENVIRONMENT,
    MALLOC_ARENAS,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    available_cpus,
)
from tests.service.arena_probe import arenas_after


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


def test_the_probe_sees_one_arena_per_thread_without_a_bound() -> None:
    env = {key: value for key, value in os.environ.items() if key != ARENA_ENVIRONMENT}
    assert arenas_after("", env) > MALLOC_ARENAS, "the probe could not tell the bound"


def test_limit_malloc_arenas_bounds_the_arenas_of_later_threads() -> None:
    env = {key: value for key, value in os.environ.items() if key != ARENA_ENVIRONMENT}
    setup = "from service.host import limit_malloc_arenas; assert limit_malloc_arenas()"
    assert arenas_after(setup, env) <= MALLOC_ARENAS


def test_an_operators_malloc_arena_max_is_left_alone() -> None:
    env = {**os.environ, ARENA_ENVIRONMENT: "4"}
    setup = "from service.host import limit_malloc_arenas; assert not limit_malloc_arenas()"
    assert arenas_after(setup, env) == 4
