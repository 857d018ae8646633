"""PyTorch ``state_dict`` (torchvision, timm) <-> jaxcnn variables, without importing torch.

    sd = torchvision.models.resnet50(weights="DEFAULT").state_dict()   # or load_file("r50.pth")
    variables = from_torch_state_dict("resnet50", sd)    # {"params": ..., "batch_stats": ...}
    logits = models.create_model("resnet50").apply(variables, x)        # x: NHWC

Tensors are found by name (see :mod:`jaxcnn.interop.core` and the per-family names in
:mod:`jaxcnn.interop.layouts`), so any key order loads the same variables: ``state_dict()``
order, sorted, a ``.safetensors`` file's own order. ``source="auto"`` takes the layout
(torchvision, timm or jaxcnn's own dotted paths) that names the given keys; the weights of some
libraries need a model option (timm's MobileNet v3: ``bn_eps=1e-5``), which a model built here
by name gets automatically. Conversions: conv ``OIHW -> HWIO`` (transposed conv ``IOHW`` ->
flipped ``HWIO``), linear ``(out, in) -> (in, out)``, 1x1 conv <-> dense, a dense layer fed by a
flattened NCHW map (VGG, AlexNet, GoogLeNet's aux ``fc1``) gets its rows permuted;
``num_batches_tracked``, ``relative_position_index`` and ``attn_mask`` are skipped.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp

from jaxcnn.inspect import resolve
from jaxcnn.interop import core
from jaxcnn.models.scan import unstack_blocks

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "torchvision_transform_input"]


def from_torch_state_dict(
    model_or_name,
    state_dict: Mapping,
    input_shape=None,
    strict: bool = True,
    *,
    source: str = "auto",
    adapt_input: bool = False,
    seed: int = 0,
    **create_kwargs,
) -> dict:
    """jaxcnn variables ``{"params", "batch_stats"}`` for a model from a torch ``state_dict``.

    ``model_or_name``: a registered name (built with ``create_kwargs``, e.g. ``num_classes=10``)
    or a module. ``state_dict``: ``str -> array`` in any order (numpy arrays, torch tensors,
    anything with ``__array__`` or ``.numpy()``). ``input_shape`` ((H, W, C) or (N, H, W, C))
    defaults to the registered ``input_size``; a module needs it. ``source``: ``"auto"``,
    ``"torchvision"``, ``"timm"`` or ``"jaxcnn"``. ``strict=False`` lets the whole classifier
    (every ``head``) have another class count or be absent; it is then freshly initialised
    (``seed``). ``adapt_input``: the first conv may have other input channels than the tensor
    (timm's ``adapt_input_conv``). Raises ``ValueError`` naming the misfits, before compiling.
    """
    return core.load(
        model_or_name,
        state_dict,
        input_shape,
        strict=strict,
        source=source,
        adapt_input=adapt_input,
        seed=seed,
        **create_kwargs,
    )


def to_torch_state_dict(
    model_or_name,
    variables: Mapping,
    reference: Mapping | None = None,
    input_shape=None,
    *,
    source: str | None = None,
    **create_kwargs,
) -> dict:
    """The inverse: numpy arrays in torch layout, keyed for ``source``'s model.

    ``reference`` (optional) maps torch keys to arrays or shapes, e.g. the target model's
    ``state_dict()``: its layout is found from its keys, the result has its order, and its
    buffers (``num_batches_tracked``, ``relative_position_index``) are copied from it. Without a
    reference, ``source`` (default: the first registered layout, torchvision where it exists)
    names the keys, in jaxcnn's call order, with zero ``num_batches_tracked`` after every
    BatchNorm and the layout's buffers, ready for ``load_state_dict``. A model with
    ``scan_blocks=True`` exports its variables unstacked (:mod:`jaxcnn.models.scan`).
    """
    model_or_name, create_kwargs, scanned = core.unscanned(model_or_name, create_kwargs)
    if scanned is not None:  # a scan_blocks=True model: export its unscanned tree
        variables = unstack_blocks(variables, scanned)
    if reference is not None:
        keys = core._shapes(reference).keys()
        plan = core.prepare(model_or_name, keys, input_shape, source or "auto", create_kwargs)
    else:
        model, input_shape, name = resolve(model_or_name, input_shape, **create_kwargs)
        name = name or type(model).__name__
        layouts = core.layouts_for(model)
        layout = core.layout_named(model, source) if source else layouts[0]
        plan = core.make_plan(model, name, input_shape, layout)
    return core.export(plan, variables, reference)


def torchvision_transform_input(x):
    """What torchvision's ``transform_input=True`` (GoogLeNet, Inception v3 pretrained weights)
    does, for NHWC input normalised with the ImageNet mean/std: the result is ``(x01 - 0.5) /
    0.5`` of the [0, 1] image. jaxcnn's models leave the step out; apply it before them."""
    mean = jnp.asarray([0.485, 0.456, 0.406])
    std = jnp.asarray([0.229, 0.224, 0.225])
    return x * (std / 0.5) + (mean - 0.5) / 0.5
