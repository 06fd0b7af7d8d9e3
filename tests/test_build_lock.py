"""Models built in the app's threads never come out on the meta device.

A diffusers ``from_pretrained`` replaces ``torch.nn.Module.register_parameter`` process-wide
while it loads (accelerate's empty-weights init). The app loads pipelines in request threads
while the scoring judge is built in a background thread: without one build lock, a judge built
during a load got meta tensors (and a test pipeline built beside a background load did: 137
errors in a CI run).
"""

from __future__ import annotations

import threading

import torch

from diffmix import pipeline, score


def test_a_judge_built_while_a_pipeline_loads_has_real_weights() -> None:
    ref = pipeline.resolve_model("nano")
    errors: list[BaseException] = []

    def load() -> None:
        try:
            for _ in range(3):
                pipeline.load_base(ref, torch.device("cpu"), torch.float32)
        except BaseException as e:  # reported below
            errors.append(e)

    loader = threading.Thread(target=load)
    loader.start()
    built = 0
    while loader.is_alive():
        model = score._new_model("smallcnn", 5)
        meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
        assert not meta, f"judge built during a pipeline load has meta parameters: {meta[:3]}"
        built += 1
    loader.join()
    assert not errors, errors
    assert built > 0
