"""Weight converters: PyTorch (torchvision-style) ``state_dict`` <-> jaxcnn variables.

    from jaxcnn.interop import from_torch_state_dict
    variables = from_torch_state_dict("resnet50", torch_state_dict)   # no torch import needed

See :mod:`jaxcnn.interop.torch` for how tensors are matched and what ``strict=False`` allows.
"""

from jaxcnn.interop.torch import (
    from_torch_state_dict,
    to_torch_state_dict,
    torchvision_transform_input,
)

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "torchvision_transform_input"]
