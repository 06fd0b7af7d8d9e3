"""Issue 14's size rule: a long core file or function says why it is long.

A core file over 400 lines names the reason in its module docstring (the words "400 lines");
a function over 80 lines (decorators included) has a ``#`` comment right above its ``def``
(or its first decorator) saying why. Cheap: parsing, no imports of the modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "diffmix"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_every_long_core_file_says_why_in_its_docstring():
    missing = []
    for path in _files():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "400 lines" not in doc:
                missing.append(str(path.relative_to(CORE.parent)))
    assert not missing, f"over {MAX_FILE_LINES} lines with no reason in the docstring: {missing}"


def test_every_long_function_says_why_at_its_def():
    missing = []
    for path in _files():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                above = lines[start - 2].strip() if start >= 2 else ""
                if not above.startswith("#"):
                    missing.append(f"{path.relative_to(CORE.parent)}:{node.lineno} {node.name}")
    assert not missing, f"over {MAX_FUNCTION_LINES} lines with no comment at the def: {missing}"
