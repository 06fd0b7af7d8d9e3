"""What a public deployment must hold against strangers (issue 19, items 1-3).

1. Uploaded images go through the guarded decoder: a decompression bomb is refused from its
   header, before Gradio or the page decodes a pixel.
2. Messages and values returned to clients carry no server paths (workspace prefix, staged
   upload folders); the server maps the opaque upload name back.
3. What the app keeps per preview call is bounded.
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datautil import write_bomb_png  # tests/ is on sys.path under pytest

from diffmix import workspace
from diffmix.settings import Settings
from pages import common, dataset, personalize, translate

#: 144 megapixels: over the 64-megapixel limit, under PIL's own error threshold (~179 Mpx), so
#: only the app's check stands between this 20 KB file and ~600 MiB of decoded pixels.
BOMB_SIDE = 12_000


@pytest.fixture
def public(workspace_home: Path, tiny_sd_dir: Path) -> Settings:
    env = {"DIFFMIX_HOME": str(workspace_home), "DIFFMIX_MODEL": str(tiny_sd_dir),
           "DIFFMIX_PUBLIC": "1"}  # fmt: skip
    return Settings.from_env(env)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png", BOMB_SIDE, BOMB_SIDE)


class PeakRSS:
    """The highest resident memory of a process while the ``with`` block runs (MiB above start)."""

    def __init__(self, pid: int | None = None) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _tiny_zip(path: Path) -> Path:
    from PIL import Image

    with zipfile.ZipFile(path, "w") as zf:
        for c, color in enumerate([(200, 40, 40), (40, 200, 40)]):
            for i in range(3):
                buf = Path(path.parent / f"c{c}-{i}.png")
                Image.new("RGB", (16, 16), tuple(v + 10 * i for v in color)).save(buf)
                zf.write(buf, f"tiny/class{c}/img{i}.png")
    return path


# --------------------------------------------------------------------------- 1. image size


def test_translate_upload_is_decoded_with_the_pixel_limit(bomb: Path, public: Settings) -> None:
    assert bomb.stat().st_size < 64_000  # a small file ...
    with PeakRSS() as mem, pytest.raises(ValueError, match="decompression bomb") as err:
        translate.open_upload(str(bomb))  # ... that declares 144 megapixels
    assert f"{BOMB_SIDE}x{BOMB_SIDE} px exceeds limit of 64000000 px" in str(err.value)
    assert str(bomb.parent) not in str(err.value)  # no server path in the message
    assert mem.growth_mib < 100, f"decoding cost {mem.growth_mib:.0f} MiB"


def test_translate_listener_refuses_a_bomb_upload(
    bomb: Path, public: Settings, workspace_home: Path
) -> None:
    sel = dataset.load_selection("demo", subset="few-shot", shots=1).selection
    listener = translate._translate_action(public)
    with PeakRSS() as mem:
        outs = list(listener(sel, None, None, "Upload", None, str(bomb), sel["class_names"][0],
                             sel["class_names"][1], "real-mix", 0, 2, 0.5))  # fmt: skip
    assert len(outs) == 1 and "dm-error" in outs[0][3]
    assert "decompression bomb" in outs[0][3] and str(bomb.parent) not in outs[0][3]
    assert mem.growth_mib < 100, f"the refused upload cost {mem.growth_mib:.0f} MiB"


def test_upload_component_hands_over_the_file_unread(bomb: Path, public: Settings) -> None:
    from gradio.data_classes import FileData

    page = translate.build(public)
    upload = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "tr-upload")
    with PeakRSS() as mem:
        value = upload.preprocess(FileData(path=str(bomb), orig_name="bomb.png"))
    assert value == str(bomb)  # a path for open_upload, not pixels decoded by Gradio
    assert mem.growth_mib < 100
    assert upload.preprocess(None) is None


def test_dataset_masks_use_the_guarded_decoder(tmp_path: Path, bomb: Path) -> None:
    from diffmix.data import ImageDecodeError
    from diffmix.data.dataset import ImageDataset, Item

    ds = ImageDataset("x", "train", ["a"], [Item("a/1", 0, None, str(bomb))], loader=None)  # type: ignore[arg-type]
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        ds.mask(0)


# --------------------------------------------------------------------------- 2. server paths


def _no_server_path(value: Any, home: Path) -> None:
    text = json.dumps(value, default=str)
    assert str(home) not in text and "/uploads/" not in text, text


def test_load_dataset_returns_no_server_paths_and_pages_resolve_it(
    tmp_path: Path, public: Settings, workspace_home: Path
) -> None:
    upload = _tiny_zip(tmp_path / "tiny.zip")
    out = dataset.on_load("Upload zip", "", str(upload), "", "train", "few-shot", 2, 0.1, 0,
                          settings=public, session="sess-1234")  # fmt: skip
    selection = out[0]
    assert isinstance(selection, dict), out[1]
    _no_server_path([selection, out[1], out[2].to_dict()], workspace_home)
    assert "sess-1234" not in json.dumps(selection)  # no internal upload ids either
    assert selection["name"] == "upload:tiny.zip"
    # every page maps the opaque name back to the staged file
    ds, sub = common.open_selection(selection, public)
    assert ds.num_classes == 2 and len(sub.indices) == 4
    staged = Path(personalize.selection_subset(selection, public)["spec"])
    assert staged.is_file() and workspace.is_inside(staged, workspace_home / "uploads")
    args = personalize.personalize_args(selection, model=None, steps=1, rank=2, lr=None, seed=0,
                                        sample_every=0, settings=public)  # fmt: skip
    assert str(staged) in args  # the job gets the real path, server side
    # a forged name is refused, never read as a path
    for forged in ("upload:../../etc/passwd", "upload:0123456789abcdef/../x.zip"):
        with pytest.raises(ValueError, match="not an upload name"):
            common.open_selection({**selection, "spec": forged}, public)
    with pytest.raises(ValueError, match="no longer on the server"):
        common.open_selection({**selection, "spec": "upload:0123456789abcdef/tiny.zip"}, public)


def test_error_messages_show_workspace_relative_paths(
    tmp_path: Path, public: Settings, workspace_home: Path
) -> None:
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no class folders")
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    for upload in (empty, bad):
        out = dataset.on_load("Upload zip", "", str(upload), "", "train", "full", 5, 0.1, 0,
                              settings=public, session="s")  # fmt: skip
        assert "dm-error" in out[1]
        _no_server_path(out[1], workspace_home)
        assert str(tmp_path) not in out[1]
    # the helper: relative inside the workspace, names outside, unchanged when private
    inside = workspace_home / "runs" / "x" / "config.json"
    assert common.display_path(inside, public) == "runs/x/config.json"
    assert common.display_path("/srv/secret/model", public) == "model"
    msg = f"cannot read {inside}: bad; see '/srv/secret/a.txt'. <folder>/train/<class>"
    assert workspace.redact_paths(msg, public) == (
        "cannot read runs/x/config.json: bad; see 'a.txt'. <folder>/train/<class>"
    )
    private = Settings.from_env({"DIFFMIX_HOME": str(workspace_home)})
    assert workspace.redact_paths(msg, private) == msg
    assert str(workspace_home) in common.error_box(msg, private)
    assert str(workspace_home) not in common.error_box(msg, public)


def test_job_messages_hide_server_paths(
    public: Settings, workspace_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pages import jobs_ui

    monkeypatch.setattr(common, "get_settings", lambda: public)  # this process is public
    bad = workspace_home / "runs" / "x" / "config.json"
    line = jobs_ui.status_text({"state": "failed", "message": f"Traceback\nValueError: {bad}"})
    assert "runs/x/config.json" in line and str(workspace_home) not in line


def test_header_hides_a_local_model_folder(public: Settings, tiny_sd_dir: Path) -> None:
    assert str(tiny_sd_dir) not in common.mode_line(public)
    assert f"`{tiny_sd_dir.name}`" in common.mode_line(public)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def public_app(workspace_home: Path) -> Iterator[Any]:
    """``app.py`` in public mode, as on a Hugging Face Space."""
    from browser_util import start_app

    server = start_app(workspace_home, env={"DIFFMIX_PUBLIC": "1"}, name="app-public-space")
    yield server
    server.stop()


@pytest.mark.slow
def test_public_app_over_http(
    public_app: Any, bomb: Path, tmp_path: Path, workspace_home: Path
) -> None:
    """Through gradio_client: a bomb upload is refused cheaply, selections hold no paths."""
    from gradio_client import Client, handle_file

    client = Client(public_app.url, verbose=False)
    load = dict(folder="", hub="", split="train", subset="few-shot", shots=1, imbalance=0.1,
                seed=0, api_name="/load_dataset")  # fmt: skip
    # 1. A 20 KB PNG declaring 144 megapixels, uploaded as a Translate source.
    demo = client.predict(source="Demo", upload=None, **load)[0]
    call = dict(selection=demo, adapter=None, owner=None, source_mode="Upload", source_index=None,
                source_class=demo["class_names"][0], target=demo["class_names"][1],
                strategy="real-mix", seed=0, steps=2, strength=0.5, api_name="/translate")  # fmt: skip
    with PeakRSS(public_app.proc.pid) as mem:
        out = client.predict(upload=handle_file(str(bomb)), **call)
    assert "decompression bomb" in out[-1] and "12000x12000" in out[-1], out
    assert mem.growth_mib < 150, f"the server grew {mem.growth_mib:.0f} MiB"
    assert str(workspace_home) not in out[-1] and "/tmp" not in out[-1]
    # 2. An uploaded dataset comes back under an opaque name that the other pages resolve.
    sel, status = client.predict(source="Upload zip", upload=handle_file(str(_tiny_zip(tmp_path / "tiny.zip"))), **load)[:2]  # fmt: skip
    _no_server_path([sel, status], workspace_home)
    opened = client.predict(selection=sel, adapter=None, owner=None, api_name="/translate_open")
    msg = 8  # translate_open's outputs: ..., strategy, message, carried adapter
    assert "dm-error" not in str(opened[msg]) and opened[2] == sel["indices"], opened
    _no_server_path(opened, workspace_home)
    # 3. An error naming a workspace path shows it relative to the workspace.
    gone = {**sel, "fingerprint": "0000000000000000"}
    err = client.predict(selection=gone, adapter=None, owner=None, api_name="/translate_open")
    assert "dm-error" in err[msg] and "upload:tiny.zip" in err[msg], err[msg]
    _no_server_path(err, workspace_home)


# --------------------------------------------------------------------------- 3. memory


def test_reference_classifiers_kept_in_memory_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A public app meets a new dataset per upload; only the last few classifiers stay."""
    from types import SimpleNamespace

    from diffmix import score

    fitted: list[str] = []

    def fit(ds, indices, judge, size, epochs, seed, weights, meta_path):
        fitted.append(ds.fingerprint)
        return SimpleNamespace(fingerprint=ds.fingerprint)

    monkeypatch.setattr(score, "_load_clf", lambda *a: None)
    monkeypatch.setattr(score, "_fit_clf", fit)
    monkeypatch.setattr(score, "_CLF_CACHE", type(score._CLF_CACHE)())
    datasets = [
        SimpleNamespace(fingerprint=f"fp{k}", class_names=["a", "b"], split="train")
        for k in range(10)
    ]
    for ds in datasets:
        score.reference_classifier(ds, judge="smallcnn", size=16)
    assert len(score._CLF_CACHE) <= 4
    assert list(score._CLF_CACHE)[-1] == score._clf_key("smallcnn", "fp9", "all", 16, 30, 0)
    # the most recently used one stays; an evicted one is fitted (or loaded) again
    score.reference_classifier(datasets[-1], judge="smallcnn", size=16)
    assert fitted == [f"fp{k}" for k in range(10)]
    score.reference_classifier(datasets[0], judge="smallcnn", size=16)
    assert fitted[-1] == "fp0"


def test_previews_hand_freed_memory_back(public: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Translate listener ends with release_memory, whatever way it ends."""
    calls: list[int] = []
    monkeypatch.setattr(common, "release_memory", lambda: calls.append(1) or True)
    sel = dataset.load_selection("demo", subset="few-shot", shots=1).selection
    names = sel["class_names"]
    args = (sel, None, None, "Dataset image", None, None, None, names[1], "real-mix", 0, 2)
    one = list(translate._translate_action(public)(*args, 0.5))  # no source picked: refused
    assert "dm-error" in one[-1][-1] and calls, "the image listener did not release memory"
    calls.clear()
    sweep = list(translate._sweep_action(public)(*args))
    assert "dm-error" in sweep[-1][-1] and calls, "the sweep listener did not release memory"


def test_malloc_arena_limit_leaves_an_operator_setting_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert common.limit_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if common._libc() is None:
        pytest.skip("not glibc: the memory calls are no-ops")
    assert common.limit_malloc_arenas(8) is True  # 8 per core is glibc's default already
    assert common.release_memory() in (True, False)
