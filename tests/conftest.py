"""Shared fixtures: every test session gets its own workspace (``DIFFMIX_HOME``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The browser fixtures (app_server, browser, page) are registered once, here: importing them
# into several test modules made one session-scoped Playwright per module, and a second
# sync Playwright cannot start while the first is alive.
pytest_plugins = ["browser_util", "pageutil"]  # pageutil: the page tests' fixtures

SHARED_FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers17"


@pytest.fixture(scope="session", autouse=True)
def workspace_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh workspace for the whole test session (the demo is rendered once into it)."""
    home = tmp_path_factory.mktemp("diffmix-home")
    old = os.environ.get("DIFFMIX_HOME")
    os.environ["DIFFMIX_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DIFFMIX_HOME", None)
    else:
        os.environ["DIFFMIX_HOME"] = old


@pytest.fixture(scope="session")
def flowers17() -> Path:
    """The shared real-photo dataset (12 classes x 30 JPEGs); skips cleanly when absent."""
    if not SHARED_FLOWERS.is_dir():
        pytest.skip(f"real-photo test data not found at {SHARED_FLOWERS}")
    return SHARED_FLOWERS


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion pipeline built from configs and saved as a diffusers folder.

    Same component classes as SD 1.x (real CLIP vocabulary); 32 px, untrained, fast on CPU.
    """
    from diffmix.nano.build import NanoArchitecture, build_pipeline

    arch = NanoArchitecture(
        resolution=32,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        vae_channels=(16, 16),
        unet_channels=(16, 32),
        unet_head_dim=8,
    )
    path = tmp_path_factory.mktemp("tiny-sd") / "tiny-sd"
    build_pipeline(arch, seed=0).save_pretrained(path, safe_serialization=True)
    return path
