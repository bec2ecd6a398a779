"""Shared pytest fixtures. Each block belongs to the part of docproc that needs it."""

from __future__ import annotations

import pytest

from docproc.settings import Settings

# ---------------------------------------------------------------------------
# intake + render (workers/intake.py, workers/render.py)
# ---------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The shipped defaults, with no .env file read; tighten a limit with
    ``settings.model_copy(update={...})``."""
    return Settings(_env_file=None)


# --- end of intake + render block -------------------------------------------


# ---------------------------------------------------------------------------
# InternVL engine (workers/engines/internvl.py, workers/engines/tiny_internvl.py)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny randomly initialised InternVL checkpoint (real architecture, seed 0), built once."""
    from workers.engines.tiny_internvl import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("tiny-internvl") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir) -> Settings:
    """Settings that point the engine at the tiny model, on the CPU, with small token budgets."""
    return Settings(
        _env_file=None,
        model=str(tiny_model_dir),
        device="cpu",
        dtype="auto",
        attn_implementation="auto",
        max_new_tokens_ocr=24,
        max_new_tokens_tables=24,
        max_new_tokens_extract=32,
    )


@pytest.fixture(scope="session")
def tiny_engine(tiny_settings):
    """An InternVLEngine that loaded the tiny model through the normal load() path."""
    from workers.engines.internvl import InternVLEngine

    return InternVLEngine(tiny_settings).load()


# --- end of InternVL engine block --------------------------------------------
