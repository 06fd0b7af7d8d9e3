"""Every code block of README.md runs, so none can rot (issue 13).

```python blocks run as written. ```bash blocks run as written, one shell per block, in a
scratch folder laid out like the repository (its files linked in, ``../shared`` the shared
data), with the test session's workspace as ``DIFFMIX_HOME``, in README order (later blocks use
what earlier ones made). ``diffmix translate`` scores with the demo's reference classifier,
fitted once per session (other tests fit it first in a full run; alone, this file pays it).
Heavy training commands get the flags of :data:`FAST` appended
(argparse keeps the last value), so the suite stays fast while the command line itself --
its spelling, its flags, its paths -- is the README's. A block preceded by
``<!-- no-test: REASON -->`` is not run; it is reported as skipped with its reason.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Appended to a README command starting with the key, so that it takes seconds.
FAST = {
    "diffmix personalize": "--steps 2",
    "diffmix translate": "--steps 2",
    "diffmix generate": "--steps 2 --limit 8 --no-score",
    "diffmix train": "--epochs 1",
}
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_NO_TEST = re.compile(r"<!--\s*no-test:\s*(.+?)\s*-->")


def readme_blocks(text: str) -> list[dict]:
    """The fenced blocks of ``text``: ``{"n", "line", "lang", "code", "skip"}``; ``skip`` is
    the reason of a ``<!-- no-test: ... -->`` comment on the last non-blank line above."""
    blocks = []
    for n, m in enumerate(_FENCE.finditer(text)):
        before = [ln for ln in text[: m.start()].splitlines() if ln.strip()]
        mark = _NO_TEST.search(before[-1]) if before else None
        blocks.append({
            "n": n, "line": text[: m.start()].count("\n") + 1, "lang": m.group(1),
            "code": m.group(2), "skip": mark.group(1) if mark else None,
        })  # fmt: skip
    return blocks


def fast_commands(code: str) -> str:
    """``code`` with comments dropped, continuations joined and :data:`FAST` flags appended."""
    lines = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        for prefix, extra in FAST.items():
            if line.startswith(prefix):
                line = f"{line} {extra}"
        lines.append(line)
    return "\n".join(lines) + "\n"


BLOCKS = readme_blocks(README.read_text())
_DONE: set[int] = set()
#: Top-level entries not linked into the scratch copy (outputs of the README's commands, VCS).
_NOT_LINKED = {"workspace", "out", ".git", ".venv", ".pytest_cache"}
_FAILED: set[int] = set()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("readme")
    repo = base / "repo"
    repo.mkdir()
    for entry in ROOT.iterdir():  # the code, read-only; what the blocks write lands here
        if entry.name not in _NOT_LINKED:
            (repo / entry.name).symlink_to(entry)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (base / "shared").symlink_to(shared)
    bindir = str(Path(sys.executable).parent)
    # The session's workspace: the demo's scoring judge (which `diffmix translate` uses) is
    # fitted once per test session, shared with the other tests that need it.
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # fmt: skip
    return repo, env


def _run(block: dict, repo: Path, env: dict) -> None:
    if block["lang"] == "python":
        cmd, stdin = [sys.executable, "-"], block["code"]
    else:
        cmd, stdin = ["bash", "-euo", "pipefail", "-s"], fast_commands(block["code"])
    # its own process group, so that a timeout ends the commands the shell started too
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=repo, env=env, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(stdin, timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"README.md line {block['line']} ({block['lang']} block) ran over 1800 s")
    assert proc.returncode == 0, (
        f"README.md line {block['line']} ({block['lang']} block) failed:\n{stdin}\n"
        f"--- stderr ---\n{stderr[-3000:]}"
    )


def test_every_block_is_run_or_says_why_not():
    assert BLOCKS, "no code blocks found in README.md"
    for b in BLOCKS:
        assert b["lang"] in ("python", "bash") or b["skip"], (
            f"README.md line {b['line']}: a ```{b['lang']} block; runnable blocks are python "
            "or bash, others need a <!-- no-test: REASON --> line above"
        )
    # the first user's copy-paste, at least, is run
    assert any(b["lang"] == "python" and "assets/nano-sd" in b["code"] and not b["skip"]
               for b in BLOCKS)  # fmt: skip


def _builds_on(block: dict) -> list[dict]:
    """The earlier blocks ``block`` needs: for a bash block using ``workspace/`` paths, the
    earlier bash blocks that use them too (an adapter, a synthetic set); else none."""
    if block["lang"] != "bash" or "workspace/" not in block["code"]:
        return []
    return [b for b in BLOCKS[: block["n"]] if b["lang"] == "bash" and "workspace/" in b["code"]]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b['line']}-{b['lang']}" for b in BLOCKS])
def test_readme_block(block, scratch):
    if block["skip"]:
        pytest.skip(f"README.md line {block['line']}: {block['skip']}")
    repo, env = scratch
    if "../shared/data/flowers17" in block["code"] and not (repo.parent / "shared").exists():
        pytest.skip("the shared real-photo data (../shared/data/flowers17) is absent")
    for b in [*_builds_on(block), block]:  # what this block builds on, then itself
        if b["skip"] or b["n"] in _DONE:
            continue
        if b["n"] in _FAILED:
            pytest.skip(f"README.md line {b['line']}, which this block follows, failed")
        _FAILED.add(b["n"])
        _run(b, repo, env)
        _FAILED.discard(b["n"])
        _DONE.add(b["n"])
