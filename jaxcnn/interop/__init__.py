"""Weight converters: torchvision / timm / Keras / safetensors weights <-> jaxcnn variables.

    from jaxcnn.interop import create_model, from_torch_state_dict, load_file
    variables = from_torch_state_dict("resnet50", load_file("resnet50.safetensors"))
    model, variables = create_model("resnet50", pretrained="resnet50.pth", num_classes=10)

Tensors are matched by name through a per-model-class layout (:mod:`jaxcnn.interop.layouts`,
:mod:`jaxcnn.interop.keras`), so the key order never matters and any misfit is named. The
command line ``python -m jaxcnn.convert SRC OUT --model NAME`` writes an Orbax checkpoint that
:func:`load_variables` (and a training run's ``init_from``) reads. See docs/interop.md.
"""

from jaxcnn.interop.core import ConversionError, Layout, register_layout
from jaxcnn.interop.files import load_file, save_file
from jaxcnn.interop.keras import read_keras
from jaxcnn.interop.pretrained import (
    Pretrained,
    PretrainedCfg,
    create_model,
    eval_transform,
    load_variables,
    predict,
    pretrained_cfg,
)
from jaxcnn.interop.torch import (
    from_torch_state_dict,
    to_torch_state_dict,
    torchvision_transform_input,
)

__all__ = [
    "ConversionError",
    "Layout",
    "Pretrained",
    "PretrainedCfg",
    "create_model",
    "eval_transform",
    "from_torch_state_dict",
    "load_file",
    "load_variables",
    "predict",
    "pretrained_cfg",
    "read_keras",
    "register_layout",
    "save_file",
    "to_torch_state_dict",
    "torchvision_transform_input",
]
