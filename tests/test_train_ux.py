"""The Train page with 200 classes (summarised per-class chart, top confusions), empty plots,
and the command line shown on the Personalize and Train pages (real callbacks on the demo)."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
from data200 import class_names, write_dataset

from diffmix import cli
from diffmix.classify import TrainConfig
from diffmix.personalize import PersonalizeConfig
from diffmix.settings import Settings
from pages import dataset, personalize, train


@pytest.fixture
def private(workspace_home: Path) -> Settings:
    return Settings.from_env({"DIFFMIX_HOME": str(workspace_home)})


def test_per_class_chart_summarises_200_classes() -> None:
    names = class_names()
    acc = [None if k == 3 else (k % 50) / 50 for k in range(200)]
    worst, best = train.class_extremes(names, acc, n=10)
    assert [a for _, a in worst] == [0.0] * 4 + [0.02] * 4 + [0.04] * 2
    assert worst[0][0] == names[0] and names[3] not in [n for n, _ in worst + best]
    assert [a for _, a in best] == [0.98] * 4 + [0.96] * 4 + [0.94] * 2
    fig = train.per_class_figure(names, acc)
    hist, bars = fig.data
    assert sum(hist.y) == 199  # every class with a value, in 10 bins
    assert len(bars.y) == 20 and list(bars.customdata)[-1] == worst[0][0]  # worst at the top
    assert all(len(label) <= 27 for label in bars.y)  # long names cut, full name on hover
    small = train.per_class_figure(names[:3], [0.1, None, 0.5])
    assert list(small.data[0].x) == names[:3]  # a few classes: every bar, in class order


def test_top_confusions_instead_of_a_200x200_grid() -> None:
    names = class_names()
    m = np.eye(200, dtype=int) * 3
    m[5, 9], m[7, 2], m[9, 5], m[1, 0] = 4, 2, 2, 1
    conf = {"class_names": names, "matrix": m.tolist()}
    top = train.top_confusions(conf, k=3)
    assert [(t["true"], t["predicted"], t["count"]) for t in top] == [
        (names[5], names[9], 4), (names[7], names[2], 2), (names[9], names[5], 2)]  # fmt: skip
    assert top[0]["share"] == pytest.approx(4 / 7)
    fig = train.confusion_figure(conf)
    assert fig.data[0].type == "bar" and len(fig.data[0].x) == 4
    assert list(fig.data[0].x) == [1, 2, 2, 4]  # the most frequent drawn at the top
    assert "Top 4 confusions of 200 classes" in fig.layout.title.text
    small = train.confusion_figure({"class_names": names[:3], "matrix": np.eye(3).tolist()})
    assert small.data[0].type == "heatmap"
    none = train.confusion_figure({"class_names": names, "matrix": np.eye(200).tolist()})
    assert "no confusions" in none.layout.annotations[0].text


def test_empty_plots_say_no_data_yet() -> None:
    for fig in (train.curves_figure([]), train.per_class_figure([], None),
                train.confusion_figure(None)):  # fmt: skip
        assert "no data yet" in fig.layout.annotations[0].text or "no confusion matrix yet" in (
            fig.layout.annotations[0].text)  # fmt: skip
        assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False
    assert train.curves_figure([{"epoch": 1, "train_loss": 1.0}]).layout.annotations == ()


def test_a_real_200_class_run_draws_readable_figures(tmp_path: Path) -> None:
    from diffmix.classify import train as train_classifier

    cub = write_dataset(tmp_path / "cub")
    run = tmp_path / "run"
    train_classifier(TrainConfig(dataset=str(cub), arch="smallcnn", epochs=1, resolution=16,
                                 batch_size=64, num_threads=1), run)  # fmt: skip
    curves, per_class, conf = train.live_figures(run)
    assert len(curves.data[0].x) == 1
    assert per_class.data[0].type == "bar" and sum(per_class.data[0].y) == 200
    assert conf.data[0].type == "bar" and len(conf.data[0].y) <= train.TOP_CONFUSIONS


def test_command_boxes_on_the_demo_parse_back(private: Settings) -> None:
    sel = dataset.load_selection("demo", subset="few-shot", shots=5, seed=0).selection
    text = train._command_action(private)(None, sel, [], 0.1, 0.5, "smallcnn", 3, None, 16, 0.05,
                                          1, None, "none", False, "ce")  # fmt: skip
    argv = shlex.split(text)
    ns = cli.build_parser().parse_args(argv[1:])
    cfg = TrainConfig(**cli._stage_fields(ns, TrainConfig, "train"))
    assert cfg == train.train_config(sel, arch="smallcnn", epochs=3, batch_size=16, seed=1,
                                     p=0.1, settings=private)  # fmt: skip
    assert (cfg.shots, cfg.arch, cfg.epochs) == (5, "smallcnn", 3)
    text = personalize._command_action(private)(sel, "nano", 30, 4, None, 0, 0, 2, False,
                                                "auto (on for long-tail)")  # fmt: skip
    ns = cli.build_parser().parse_args(shlex.split(text)[1:])
    cfg = PersonalizeConfig(**cli._stage_fields(ns, PersonalizeConfig, "personalize"))
    assert (cfg.steps, cfg.rank, cfg.batch_size, cfg.shots) == (30, 4, 2, 5)
    assert train._command_action(private)(None, None, [], 0.1, 0.5, "auto", 3, None, 16, 0.05,
                                          0, None, "none", False, "ce").startswith("# no dataset")  # fmt: skip
