"""The strategy table, the prompts and the shared-grid sampler have their own modules (issue 14).

``diffmix.strategies`` and ``diffmix.prompts`` import no torch (configs, the CLI parser and
pages that only need the names load them cheaply); ``diffmix.translate`` keeps re-exporting the
same objects, so former import paths keep working.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(code: str) -> str:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("module", ["diffmix.strategies", "diffmix.prompts"])
def test_importing_the_table_or_the_prompts_imports_no_torch(module):
    mods = _modules_after(f"import {module}")
    assert module in mods
    assert "torch" not in mods and "diffusers" not in mods


def test_the_generate_package_imports_no_torch_until_it_runs():
    # its config, plan and run modules only need the table: translate (torch) loads at run time
    mods = _modules_after("import diffmix.generate")
    assert "diffmix.generate.config" in mods
    assert "torch" not in mods and "diffmix.translate" not in mods


def test_translate_re_exports_the_same_objects():
    from diffmix import prompts, sampler, strategies, translate

    for name in ("Strategy", "STRATEGIES", "get_strategy", "StrategyName"):
        assert getattr(translate, name) is getattr(strategies, name), name
    for name in ("denoise_batch", "img2img_start"):
        assert getattr(translate, name) is getattr(sampler, name), name
    for name in ("build_prompt", "prompt_word", "template_from_prompt"):
        assert getattr(translate, name) is getattr(prompts, name), name


def test_unknown_strategy_names_the_choices():
    from diffmix.strategies import get_strategy

    with pytest.raises(ValueError, match="unknown strategy 'nope'; choose one of diff-mix"):
        get_strategy("nope")


def test_grid_joins_items_as_diffusers_get_timesteps():
    from diffmix.sampler import img2img_start

    assert img2img_start(25, 1.0) == (0, 25)
    assert img2img_start(25, 0.5) == (13, 12)  # int(12.5) = 12 steps run
    assert img2img_start(25, 0.01) == (25, 0)  # too small: no step at all
