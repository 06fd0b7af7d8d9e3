"""The authors' recipes: values with sources, precedence (flags > YAML > recipe), CLI, app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffmix import cli
from diffmix.recipes import RECIPES, apply_recipe, get_recipe, recipe_fields


def test_recipes_are_the_authors_run_sh_values_with_sources():
    few, conv, lt = RECIPES["fewshot"], RECIPES["conventional"], RECIPES["longtail"]
    assert {k: s.value for k, s in few.items()} == {
        "shots": 5, "strength": 0.7, "gamma": 0.5, "p": 0.3, "multiplier": 5}  # fmt: skip
    assert (conv["strength"].value, conv["gamma"].value, conv["p"].value) == (0.7, 0.5, 0.1)
    assert (lt["imbalance"].value, lt["p"].value, lt["class_balanced"].value) == (0.01, 0.3, True)
    for recipe in RECIPES.values():
        for setting in recipe.values():
            assert "Zhicaiwww/Diff-Mix" in setting.source or ":scripts/" in setting.source
    assert few["p"].source.endswith(":47 (synthetic_prob=0.3, 5-shot)")
    with pytest.raises(ValueError, match="unknown recipe 'paper'.*fewshot"):
        get_recipe("paper")


def test_recipes_import_without_torch():
    code = "import sys, diffmix.recipes; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_recipe_fields_per_stage_and_precedence():
    assert recipe_fields("fewshot", "generate") == {
        "shots": 5, "strengths": [0.7], "gamma": 0.5, "multiplier": 5}  # fmt: skip
    assert recipe_fields("longtail", "personalize") == {"imbalance": 0.01, "class_balanced": True}
    # what the user set wins; the other subset kind is not forced on a user's subset
    out = apply_recipe("longtail", "train", {"p": 0.2, "shots": 3})
    assert out == {"p": 0.2, "shots": 3, "gamma": 0.5}
    assert apply_recipe(None, "train", {"p": 0.2}) == {"p": 0.2}


def _fields(argv: list[str], stage: str, config_cls) -> dict:
    ns = cli.build_parser().parse_args(argv)
    extra = {"strengths": [ns.strength]} if getattr(ns, "strength", None) is not None else None
    return cli._stage_fields(ns, config_cls, stage, extra)


def test_cli_recipe_flag_yaml_and_overrides(tmp_path: Path):
    from diffmix.classify import TrainConfig
    from diffmix.generate import GenerateConfig
    from diffmix.personalize import PersonalizeConfig

    f = _fields(["train", "demo", "--out", "x", "--recipe", "fewshot", "--p", "0.2"], "train",
                TrainConfig)  # fmt: skip
    assert (f["p"], f["gamma"], f["shots"]) == (0.2, 0.5, 5)
    yaml = tmp_path / "c.yaml"
    yaml.write_text("recipe: conventional\ngamma: 0.8\n")
    f = _fields(["train", "--config", str(yaml), "--out", "x"], "train", TrainConfig)
    assert (f["p"], f["gamma"]) == (0.1, 0.8) and "recipe" not in f
    TrainConfig(**f, synthetic=["s"])  # a valid config
    f = _fields(["generate", "demo", "--out", "x", "--recipe", "fewshot", "--strength", "0.9"],
                "generate", GenerateConfig)  # fmt: skip
    assert (f["strengths"], f["multiplier"], f["shots"]) == ([0.9], 5, 5)
    f = _fields(["personalize", "demo", "--out", "x", "--recipe", "longtail"], "personalize",
                PersonalizeConfig)  # fmt: skip
    assert (f["imbalance"], f["class_balanced"]) == (0.01, True)
    f = _fields(["personalize", "demo", "--out", "x", "--recipe", "longtail",
                 "--no-class-balanced"], "personalize", PersonalizeConfig)  # fmt: skip
    assert f["class_balanced"] is False


def test_experiment_defaults_follow_the_fewshot_recipe():
    from diffmix.experiment import ExperimentConfig

    cfg = ExperimentConfig()
    few = RECIPES["fewshot"]
    assert (cfg.strength, cfg.gamma, cfg.p, cfg.multiplier, cfg.shots) == tuple(
        few[k].value for k in ("strength", "gamma", "p", "multiplier", "shots")
    )
    assert "run.sh:46" in ExperimentConfig.model_fields["strength"].description
    ns = cli.build_parser().parse_args(["experiment", "fewshot", "--out", "x", "--recipe",
                                        "conventional", "--seeds", "0"])  # fmt: skip
    f = cli._stage_fields(ns, ExperimentConfig, "experiment", {"kind": "fewshot", "seeds": [0]},
                          skip=("kind", "seeds", "arms"))  # fmt: skip
    assert (f["p"], f["strength"], f["seeds"]) == (0.1, 0.7, [0])


def test_long_tail_personalization_is_class_balanced_by_default():
    from diffmix.personalize import PersonalizeConfig

    assert PersonalizeConfig(imbalance=0.1).resolved().class_balanced is True
    assert PersonalizeConfig(shots=5).resolved().class_balanced is False
    assert PersonalizeConfig().resolved().class_balanced is False
    assert PersonalizeConfig(imbalance=0.1, class_balanced=False).resolved().class_balanced is False


def test_app_recipe_menus_fill_the_values():
    from pages import common
    from pages import generate as gen_page
    from pages import train as train_page

    p, gamma, note = train_page._recipe_action("longtail")
    assert (p["value"], gamma["value"]) == (0.3, 0.5) and "run.sh:65" in note
    mult, strengths, _ = gen_page._recipe_action("conventional")
    assert (mult["value"], strengths["value"]) == (5, "0.7")
    assert train_page._recipe_action(common.NO_RECIPE)[2] == ""
