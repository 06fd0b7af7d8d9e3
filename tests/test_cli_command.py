"""The CLI command every page shows (diffmix.command): printed, parsed by the CLI, same config."""

from __future__ import annotations

import shlex

import pytest

from diffmix import cli
from diffmix.classify import TrainConfig
from diffmix.command import command_args, command_for, translate_command
from diffmix.generate import GenerateConfig
from diffmix.personalize import PersonalizeConfig
from diffmix.translate import TranslateConfig

STAGE_CLASSES = {"personalize": PersonalizeConfig, "train": TrainConfig,
                 "generate": GenerateConfig}  # fmt: skip


def _parse_back(stage: str, command: str):
    """The config the CLI builds from ``command`` (as ``cmd_<stage>`` does)."""
    argv = shlex.split(command)
    assert argv[:2] == ["diffmix", stage]
    ns = cli.build_parser().parse_args(argv[1:])
    extra = {"strengths": [ns.strength]} if getattr(ns, "strength", None) is not None else None
    cls = STAGE_CLASSES[stage]
    return cls(**cli._stage_fields(ns, cls, stage, extra)), ns


@pytest.mark.parametrize(
    "stage, config",
    [
        ("personalize", PersonalizeConfig(dataset="demo", model="nano", steps=40, rank=4,
                                          lr=1.234567891e-4, seed=3, shots=5, sample_every=0,
                                          ti_only=True, class_balanced=False)),
        ("personalize", PersonalizeConfig(dataset="my data/folder", imbalance=0.05,
                                          class_balanced=True, batch_size=4)),
        ("train", TrainConfig(dataset="demo", shots=5, subset_seed=2, synthetic=["/w/a", "/w/b c"],
                              p=0.3, gamma=0.25, arch="smallcnn", epochs=7, resolution=32,
                              batch_size=16, lr=0.01, seed=4, num_threads=1, mix="none",
                              balanced_sampling=True, loss="drw")),
        ("train", TrainConfig(dataset="odd-spec", mix="cutmix", mix_prob=0.25)),
        ("generate", GenerateConfig(dataset="demo", strategy="real-mix", multiplier=3,
                                    strengths=[0.5, 0.9], shots=5, targets="tail",
                                    num_inference_steps=10, filter_bottom=0.1, guidance_scale=3.0)),
        ("generate", GenerateConfig(strategy="mixup", strengths=[0.4], score=False, limit=9)),
    ],
)  # fmt: skip
def test_printed_command_parses_back_to_the_same_config(stage: str, config) -> None:
    command = command_for(stage, config, out="runs/x y")
    back, ns = _parse_back(stage, command)
    assert back == config, command
    assert ns.out == "runs/x y"
    assert command.startswith(f"diffmix {stage} ")


def test_defaults_are_left_out_and_explicit_values_kept() -> None:
    assert command_args("train", TrainConfig()) == []
    assert command_args("train", TrainConfig(epochs=30)) == ["--epochs", "30"]  # set explicitly
    assert command_for("train", TrainConfig()) == "diffmix train demo --out OUT_DIR"


def test_a_setting_without_a_flag_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="momentum have no command-line flag.*--config"):
        command_args("train", TrainConfig(momentum=0.5))
    with pytest.raises(ValueError, match="unknown stage 'paint'|no config command"):
        command_args("paint", TrainConfig())


def test_translate_command_parses_back() -> None:
    cfg = TranslateConfig(strategy="diff-mix", model="nano", adapter="adapters/my ad",
                          num_inference_steps=12, guidance_scale=5.5, gamma=0.3)  # fmt: skip
    cmd = translate_command(cfg, dataset="demo", target="circle red", strengths=[0.5, 0.75],
                            seed=7, source=14, out="o")  # fmt: skip
    ns = cli.build_parser().parse_args(shlex.split(cmd)[1:])
    assert (ns.dataset, ns.source, ns.target, ns.strength) == (
        "demo",
        "14",
        "circle red",
        [0.5, 0.75],
    )
    assert (ns.strategy, ns.model, ns.adapter, ns.seed, ns.steps) == (
        "diff-mix",
        "nano",
        "adapters/my ad",
        7,
        12,
    )
    assert (ns.guidance_scale, ns.gamma, ns.out) == (5.5, 0.3, "o")
    back = TranslateConfig(strategy=ns.strategy, model=ns.model, adapter=ns.adapter,
                           num_inference_steps=ns.steps, guidance_scale=ns.guidance_scale,
                           gamma=ns.gamma, device=ns.device)  # fmt: skip
    assert back == cfg
