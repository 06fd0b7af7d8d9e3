"""ZeroGPU wrapping: spaces.GPU only on a ZeroGPU Space; long non-nano jobs refused there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pages import zerogpu

ON = {zerogpu.ENV_ZERO_GPU: "true"}


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in ``spaces`` module that records what ``spaces.GPU`` was asked for."""
    calls: list[dict] = []
    mod = types.ModuleType("spaces")
    mod.__spec__ = types.SimpleNamespace(name="spaces")  # find_spec needs one

    def GPU(task=None, *, duration=None):  # noqa: N802 - the real name
        def deco(fn):
            def wrapped(*a, **k):
                calls.append({"fn": fn.__name__, "duration": duration, "args": a})
                return fn(*a, **k)

            return wrapped

        return deco

    mod.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", mod)
    monkeypatch.setattr(zerogpu.importlib.util, "find_spec", lambda name: mod.__spec__)
    return calls


def test_identity_without_zerogpu(fake_spaces):
    def f(x):
        return x + 1

    assert zerogpu.gpu_call(30, env={})(f) is f
    assert zerogpu.gpu_call(30, env={zerogpu.ENV_ZERO_GPU: "0"})(f) is f
    assert not zerogpu.zero_gpu_active({})


def test_identity_when_spaces_missing(monkeypatch):
    monkeypatch.setattr(zerogpu.importlib.util, "find_spec", lambda name: None)

    def f():
        return 1

    assert not zerogpu.zero_gpu_active(ON)
    assert zerogpu.gpu_call(30, env=ON)(f) is f


def test_wrapped_on_zerogpu_with_duration(fake_spaces):
    def preview(n):
        return n * 2

    g = zerogpu.gpu_call(45, env=ON)(preview)
    assert g is not preview
    assert g(3) == 6
    assert fake_spaces == [{"fn": "preview", "duration": 45, "args": (3,)}]


def test_preview_seconds_grows_and_is_clamped():
    one = zerogpu.preview_seconds(1, 25)
    assert 10 <= one <= zerogpu.MAX_PREVIEW_SECONDS
    assert zerogpu.preview_seconds(9, 25) >= one
    assert zerogpu.preview_seconds(1000, 1000) == zerogpu.MAX_PREVIEW_SECONDS


def test_long_jobs_refused_for_big_models_on_zerogpu(fake_spaces, tmp_path):
    sd = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    with pytest.raises(ValueError, match="dedicated GPU hardware"):
        zerogpu.check_job_hardware("personalize", ["demo", "--model", sd], env=ON)
    # the model comes from the adapter when --model is absent
    adapter = tmp_path / "ad"
    adapter.mkdir()
    (adapter / "adapter.json").write_text(json.dumps({"base_model": sd}))
    with pytest.raises(ValueError, match=sd):
        zerogpu.check_job_hardware("generate", ["demo", "--adapter", str(adapter)], env=ON)
    # nano, non-diffusion stages, and non-ZeroGPU deployments go ahead
    zerogpu.check_job_hardware("personalize", ["demo", "--model", "nano"], env=ON)
    zerogpu.check_job_hardware("generate", ["demo"], env=ON)
    zerogpu.check_job_hardware("train", ["demo", "--model", sd], env=ON)
    zerogpu.check_job_hardware("personalize", ["demo", "--model", sd], env={})


def test_translate_page_preview_calls_are_decorated_under_zerogpu(tmp_path):
    """Importing the Translate page on ZeroGPU wraps its two GPU calls (fresh interpreter,
    with a stand-in ``spaces`` package on the path)."""
    (tmp_path / "spaces.py").write_text(
        "seen = []\n"
        "def GPU(task=None, *, duration=None):\n"
        "    def deco(fn):\n"
        "        seen.append((fn.__name__, duration))\n"
        "        return fn\n"
        "    return deco\n"
    )
    code = (
        "import spaces, pages.translate as t; "
        "print(sorted((n, d if isinstance(d, int) else 'dynamic') for n, d in spaces.seen))"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, zerogpu.ENV_ZERO_GPU: "true",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last == "[('run_translation', 'dynamic'), ('score_translation', 30)]"


def test_start_run_refuses_before_making_anything(monkeypatch, workspace_home):
    from pages import jobs_ui

    monkeypatch.setattr(zerogpu, "zero_gpu_active", lambda env=None: True)
    with pytest.raises(ValueError, match="dedicated GPU hardware"):
        jobs_ui.start_run(
            "personalize", ["demo", "--model", "someone/sd"], "zg-refused", owner=None
        )
    assert not (jobs_ui.stage_root("personalize") / "zg-refused").exists()
