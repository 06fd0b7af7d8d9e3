"""The run registry and its owner rule live in the core; pages do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from diffmix import jobs, registry
from diffmix.settings import Settings

PAGES = Path(__file__).resolve().parents[1] / "pages"
#: Modules of pages/ that are shared helpers, not pages (a page may import these).
SHARED = {"common", "jobs_ui", "zerogpu", "selection", "preview", "estimates", "presets_ui",
          "__init__"}  # fmt: skip


def _settings(tmp_path: Path, public: bool) -> Settings:
    return Settings.from_env(
        {"DIFFMIX_HOME": str(tmp_path), "DIFFMIX_PUBLIC": "1" if public else "0"}
    )


@pytest.mark.parametrize("public", [False, True])
def test_one_owner_rule_for_the_registry_and_the_jobs(tmp_path, public):
    s = _settings(tmp_path, public)
    assert s.public is public
    for session in ("a" * 20, None):
        for made_by in ("a" * 20, "b" * 20, None):
            seen = registry.may_see(s, session, made_by)
            expected = (not public) or (session is not None and made_by == session)
            assert seen is expected, (public, session, made_by)
            # the job functions take the registry's filter and agree with it
            job = jobs.Job("train", str(tmp_path), 1, made_by, [], 0.0)
            allowed = True
            try:
                jobs.check_owner(job, registry.owner_filter(s, session))
            except PermissionError:
                allowed = False
            if session is not None or not public:
                assert allowed is seen


def test_a_public_session_without_a_token_sees_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMIX_HOME", str(tmp_path))
    s = _settings(tmp_path, True)
    run = registry.stage_root("generate") / "cli-made"
    run.mkdir()
    (run / "metadata.jsonl").write_text("")
    registry.write_owner(run, None)
    assert registry.list_runs("generate", owner=None, settings=s) == []
    assert [r["name"] for r in registry.list_runs("generate", owner=None,
                                                  settings=_settings(tmp_path, False))] == ["cli-made"]  # fmt: skip
    with pytest.raises(PermissionError):
        registry.open_run("generate", "cli-made", owner="x" * 20, settings=s)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_no_page_imports_another_page_nor_private_core_names():
    for path in sorted(PAGES.glob("*.py")):
        for module, names in _imports(path):
            if module == "pages":
                pages = set(names)
            elif module.startswith("pages."):
                pages = {module.split(".")[1]}
            else:
                pages = set()
            assert pages <= SHARED, f"{path.name} imports page(s) {sorted(pages - SHARED)}"
            if module.startswith("diffmix"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {module}"
                assert module != "diffmix.cli", f"{path.name} imports the command line"
