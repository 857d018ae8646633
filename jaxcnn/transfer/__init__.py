"""Transfer learning in a few lines: freeze, per-layer learning rates, gradual unfreezing, new
heads, features for linear probes, and LoRA, over any jaxcnn model (or any linen model whose
top-level params are its stages, ``head`` last).

    from jaxcnn import models, transfer
    model = models.create_model("resnet18_cifar", num_classes=5)
    variables = transfer.replace_head(pretrained_variables, model, (1, 32, 32, 3))
    # Feature extractor: only the head trains; frozen BatchNorm keeps its statistics.
    state = transfer.create_state(model, variables, optax.adam(1e-3),
                                  [("head", "head"), (".*", None)])
    # Fine-tuning with layer-wise decay (1e-3 at the head, x0.4 per stage towards the stem).
    names = transfer.stages(model, (1, 32, 32, 3))
    labels = transfer.label_params(variables["params"], transfer.stage_rules(names))
    state = transfer.create_state(model, variables, optax.adam(1e-3), labels,
                                  lr_scales=transfer.layerwise_decay(names, 0.4))

Or the whole strategy as one :class:`Plan` (frozen / trained / LoRA groups, rate scales,
unfreezing phases counted in steps, BatchNorm handling, head reset), from Python or a config
string (``Plan.parse("finetune_lwd:0.7")``; ``--config.transfer=...`` of the classification
task); see :mod:`jaxcnn.transfer.plan`.

Rules are big_vision-style ``(pattern, label)`` lists, first match wins, unmatched parameters
are an error; see :mod:`jaxcnn.transfer.labels`.
"""

from jaxcnn.transfer.applied import Applied, Phase, Role
from jaxcnn.transfer.freeze import (
    FrozenBatchNorm,
    as_labels,
    create_state,
    finetune,
    freeze,
    frozen_batchnorm,
    frozen_bn_modules,
    layerwise_decay,
    scale_by_label,
    scales_from_rates,
)
from jaxcnn.transfer.heads import extract_features, fit_linear, linear_accuracy, replace_head
from jaxcnn.transfer.labels import (
    FROZEN,
    TRAINABLE,
    count_params,
    count_trainable,
    describe,
    label_params,
    map_with_path,
    match,
    param_order,
    path_str,
    stage_rules,
    stages,
    tree_paths,
)
from jaxcnn.transfer.lora import LoRA, LoRAApply
from jaxcnn.transfer.plan import PRESETS, Plan
from jaxcnn.transfer.unfreeze import GradualUnfreezing, carry_state

__all__ = [
    "PRESETS",
    "Applied",
    "FROZEN",
    "TRAINABLE",
    "FrozenBatchNorm",
    "GradualUnfreezing",
    "LoRA",
    "LoRAApply",
    "Phase",
    "Plan",
    "Role",
    "as_labels",
    "carry_state",
    "count_params",
    "count_trainable",
    "create_state",
    "describe",
    "extract_features",
    "finetune",
    "fit_linear",
    "freeze",
    "frozen_batchnorm",
    "frozen_bn_modules",
    "label_params",
    "layerwise_decay",
    "linear_accuracy",
    "map_with_path",
    "match",
    "param_order",
    "path_str",
    "replace_head",
    "scale_by_label",
    "scales_from_rates",
    "stage_rules",
    "stages",
    "tree_paths",
]
