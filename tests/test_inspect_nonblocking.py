"""Opening a large folder on Inspect blocks no other user (issue 15).

The first read of a 60,000-row folder takes a second or more (much more on a busy machine).
These tests serve the app (the Dataset and Inspect pages, with the app's queue settings) in
this process, hold the reading of folders named ``big*`` open, and check through the public
API, as other visitors would, that while more such reads are in flight than the app's default
concurrency (2) and Inspect's own group allow, another page's event (a dataset load) still
completes; once released, every held read returns its page. A config-level test checks that
the listeners reading rows are in Inspect's own concurrency group and nobody else's.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from datautil import write_color_folder

from diffmix import synthetic as sf
from diffmix.settings import Settings
from pages import common, dataset, inspect, jobs_ui

#: Seconds another visitor's call may take while the reads are held (a busy 2-core machine).
PROMPT_S = 60.0
#: Held reads: more than the app's default concurrency (2) and than Inspect's group allows.
HELD = inspect.ROWS_GROUP["concurrency_limit"] + 1


@pytest.fixture
def served(tmp_path: Path, workspace_home: Path, monkeypatch: pytest.MonkeyPatch):
    """The app (Dataset + Inspect) served here; reads of ``big*`` folders held until released.

    Yields (client factory, release event, started counter, names of a big and a small
    folder)."""
    from gradio_client import Client

    import app
    from diffmix import score
    from diffmix.generate import GenerateConfig, generate

    monkeypatch.setattr(score, "warm_reference_classifier", lambda *a, **k: None)  # no judge fit
    release = threading.Event()
    started: list[str] = []
    real_build = sf._build_index

    def held(path: Path, *args: Any) -> sf.RowIndex:
        if path.parent.name.startswith("big"):
            started.append(path.parent.name)
            assert release.wait(180), "the test never released the read"
        return real_build(path, *args)

    monkeypatch.setattr(sf, "_build_index", held)
    data = write_color_folder(tmp_path / "colors", per_class=4)
    root = jobs_ui.stage_root("generate")
    tag = uuid.uuid4().hex[:6]
    small = root / f"small-{tag}"
    generate(GenerateConfig(dataset=str(data), strategy="mixup", multiplier=1, score=False), small)
    bigs = []
    for k in range(HELD):
        bigs.append(root / f"big{k}-{tag}")
        shutil.copytree(small, bigs[-1])
    settings = Settings.from_env({"DIFFMIX_HOME": str(workspace_home)})
    demo = common.configure_queue(app.create_app(settings, pages=[dataset, inspect]))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        yield (
            (lambda: Client(demo.local_url, verbose=False, download_files=False)),
            release,
            started,
            ([b.name for b in bigs], small.name, data),
        )
    finally:
        release.set()
        demo.close()


def _filter_args(name: str) -> dict[str, Any]:
    return {
        "name": name, "owner": None, "source_classes": [], "target_classes": [], "s_min": 0,
        "s_max": 1, "f_min": 0, "f_max": 1, "kept": "all", "page": 1, "sort": "file order",
        "descending": False, "api_name": "/inspect_filter",
    }  # fmt: skip


def test_reads_of_large_folders_block_no_other_visitor(served) -> None:
    client, release, started, (bigs, small, data) = served
    openers = [client() for _ in bigs]
    jobs = [c.submit(**_filter_args(b)) for c, b in zip(openers, bigs, strict=True)]
    deadline = time.monotonic() + PROMPT_S
    while len(started) < inspect.ROWS_GROUP["concurrency_limit"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(started) >= inspect.ROWS_GROUP["concurrency_limit"], started
    assert not any(j.done() for j in jobs)  # the reads are held
    # another visitor loads a dataset on the Dataset page meanwhile
    other = client()
    t0 = time.monotonic()
    loaded = other.submit(
        source="Server folder", folder=str(data), upload=None, hub="", split="train", subset="full",
        shots=5, imbalance=0.1, seed=0, api_name="/load_dataset",
    ).result(timeout=PROMPT_S)  # fmt: skip
    assert loaded[0] and loaded[0]["spec"] == str(data), loaded[1]
    assert time.monotonic() - t0 < PROMPT_S
    assert not any(j.done() for j in jobs)  # ... while every read is still held
    release.set()
    for j in jobs:
        table, _gallery, summary, *_ = j.result(timeout=PROMPT_S)
        assert "images** match" in summary and len(table["data"]) > 0
    # a small folder's filter (same group) runs once the group has room
    small_out = other.predict(**_filter_args(small))
    assert "images** match" in small_out[2]


def test_row_reading_listeners_have_their_own_group(workspace_home: Path) -> None:
    """Every Inspect listener that reads a folder's rows is in ``inspect-rows`` (with a limit
    of its own); no other listener is."""
    import app

    settings = Settings.from_env({"DIFFMIX_HOME": str(workspace_home)})
    demo = app.create_app(settings)
    group = inspect.ROWS_GROUP["concurrency_id"]
    readers = {"inspect_filter", "inspect_detail", "inspect_export", "from_gallery", "from_table"}
    seen = set()
    for fn in demo.fns.values():
        name = getattr(fn.fn, "__name__", "")
        if fn.concurrency_id == group:
            assert fn.fn.__module__ == inspect.__name__ and name in readers, name
            assert fn.concurrency_limit == inspect.ROWS_GROUP["concurrency_limit"]
        if fn.fn is not None and fn.fn.__module__ == inspect.__name__ and name in readers:
            assert fn.concurrency_id == group and fn.queue, name
            seen.add(name)
    assert seen == readers
