"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data`` relative to the project root: real survey files, never copied into the repo.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real-data folder; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} is absent (it exists only in CI / the dev tree)")
    return SHARED_DATA
