"""Personalization: textual inversion (one token per class) + DreamBooth-style LoRA on the UNet.

The paper's first operation: adapt a text-to-image model to a dataset's fine-grained classes
so that ``"a photo of a <class_3> bird"`` draws class 3 faithfully. One new token per class is
added to the CLIP tokenizer, initialised from a word embedding (the super-class word, or the
class name), and trained jointly with a LoRA on the UNet attention projections (rank 10 by
default, as the authors' scripts: 4aa0ec8:scripts/finetune.sh ``--rank=10``). On a long-tail
subset classes are drawn uniformly (``class_balanced``), as the authors' released trainer does.
Differences from the authors' training (steps, resolution, token initialisation, captions):
docs/fidelity.md. ``ti_only`` trains the tokens alone (the DA-Fusion-style baseline).

Output (the *adapter directory* of DESIGN.md §3, read and written by :mod:`diffmix.adapter`)::

    pytorch_lora_weights.safetensors   diffusers LoRA (pipe.load_lora_weights(DIR)); absent if ti_only
    embeddings/<token>.safetensors     one {token: vector} file per class (pipe.load_textual_inversion)
    adapter.json                       base model, class_tokens, prompt_template, subset, config
    checkpoints/step-XXXXXX.pt         resumable training state (weights_only-loadable)

It works on any SD 1.x / 2.x diffusers model, through the same code as the embedded nano-SD,
and data-parallel under ``accelerate launch`` with no code change.

Modules: :mod:`~diffmix.personalize.config` (:class:`PersonalizeConfig`),
:mod:`~diffmix.personalize.train` (tokens, parameter groups, batches, the loss),
:mod:`~diffmix.personalize.run` (:func:`personalize`: prepare, resume, train, checkpoints,
save), :mod:`~diffmix.personalize.samples` (the sample grids drawn while training). The adapter folder's reader, checks and importer are re-exported here
from :mod:`diffmix.adapter` under their former names.
"""

from diffmix.adapter import (
    ADAPTER_FILE,
    LORA_FILE,
    MAX_TEMPLATE_CHARS,
    TEMPLATE_FIELDS,
    AdapterError,
    attach_adapter,
    check_adapter,
    check_prompt_template,
    convert_lora_layout,
    import_authors_checkpoint,
    lora_layers,
    read_adapter,
)
from diffmix.personalize.config import (
    MAX_CHECKPOINT_EVERY,
    RUN_ONLY_FIELDS,
    PersonalizeConfig,
)
from diffmix.personalize.run import auto_mixed_precision, personalize
from diffmix.personalize.samples import GRID_CHUNK, GRID_MAX_CLASSES, GRID_STEPS, grid_classes
from diffmix.personalize.train import LORA_TARGETS, TEMPLATES, add_class_tokens, class_token

__all__ = [
    "ADAPTER_FILE",
    "GRID_CHUNK",
    "GRID_MAX_CLASSES",
    "GRID_STEPS",
    "LORA_FILE",
    "LORA_TARGETS",
    "MAX_CHECKPOINT_EVERY",
    "MAX_TEMPLATE_CHARS",
    "RUN_ONLY_FIELDS",
    "TEMPLATES",
    "TEMPLATE_FIELDS",
    "AdapterError",
    "PersonalizeConfig",
    "add_class_tokens",
    "attach_adapter",
    "auto_mixed_precision",
    "check_adapter",
    "check_prompt_template",
    "class_token",
    "convert_lora_layout",
    "grid_classes",
    "import_authors_checkpoint",
    "lora_layers",
    "personalize",
    "read_adapter",
]
