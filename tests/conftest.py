"""Shared fixtures: the real ICEBURG fixture folder (read-only) and a fresh data folder per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from iceburg_daemon.config import Config, load_config
from iceburg_daemon.testing import write_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "iceburg"  # copied from ../shared (the repo stands alone)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"ICEBURG fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture
def fixture_copy(tmp_path: Path, fixtures: Path) -> Path:
    """A writable copy of the fixtures: tests never touch the originals."""
    target = tmp_path / "iceburg"
    shutil.copytree(fixtures, target)
    for p in [target, *target.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # the originals are read-only
    return target


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "home")


@pytest.fixture
def cfg(cfg_path: Path) -> Config:
    return load_config(cfg_path, env={})


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-shaped chat model with a BPE trained on the spot (no download), built once per session."""
    from iceburg_daemon.testing import tiny_base as build

    return build(tmp_path_factory.mktemp("tiny") / "base")
