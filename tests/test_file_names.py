"""One checker for the names users type that become file or folder names (run names, preset
names): the same rule with two settings, the same one-line message."""

from __future__ import annotations

import pytest

from diffmix import presets, registry
from diffmix.workspace import check_file_name


def test_run_and_preset_names_are_one_rule_with_two_settings() -> None:
    assert registry.check_name("  run-1.b_c ") == "run-1.b_c"
    assert presets.check_name(" my preset 2 ") == "my preset 2"
    assert registry.check_name("r" * 80) and presets.check_name("p" * 64)
    for bad, words in (("a b", "run name 'a b'"), ("r" * 81, "up to 80 letters, digits, '.'"),
                       ("../x", "starting with a letter"), ("a..b", "not allowed")):  # fmt: skip
        with pytest.raises(ValueError, match=words.replace(".", r"\.").replace("(", r"\(")):
            registry.check_name(bad)
    with pytest.raises(ValueError, match="preset name 'p{65}' is not allowed: use up to 64 "
                       "letters, digits, spaces, '.'"):  # fmt: skip
        presets.check_name("p" * 65)
    with pytest.raises(ValueError, match="adapter name '' is not allowed"):
        check_file_name(None, "adapter", max_length=8)
    assert registry.NAME_RE.match("x" * 80) and not registry.NAME_RE.match("x y")
