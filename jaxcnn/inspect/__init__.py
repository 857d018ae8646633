"""Inspection tools that work for every registered model, derived from the model itself.

- ``summary(model, input_shape)``: per-layer table (name, type, output shape, parameters, XLA
  FLOPs) and totals; ``print(summary("lenet5"))``.
- ``conv_output_size`` / ``pool_output_size`` / ``transposed_output_size``: output-size
  arithmetic with padding, stride and dilation (effective kernel ``K + (K-1)(D-1)``).
- ``receptive_fields(model)``: analytic receptive field (size, jump, start) of every conv and
  pooling and of every module output, from the model's jaxpr (branches: the largest path).
- ``effective_receptive_field(model, layer)``: gradient of a central unit w.r.t. the input,
  its measured extents beside the theoretical one, ``.save_png(path)``.
- ``fold_batchnorm(model, variables)``: conv -> BatchNorm pairs folded into the convolution;
  ``fold_report`` gives parameters, timing and the output difference before/after.
- ``plot_feature_maps`` / ``plot_filters`` / ``sample_image``: pictures (matplotlib, Agg);
  ``plot_attention`` / ``attention_map``: ViT rollout and Swin window attention (the rollout
  itself lives in ``jaxcnn.inspect.attention``).
- ``export_model`` / ``save_exported`` / ``load_exported``: ``jax.export`` to StableHLO.
- ``resolve(model, input_shape)``: ``(module, input_shape, name)`` from a registered name or a
  module; ``record_calls(module, input_shape)``: one :class:`Call` per module path of an abstract
  forward pass (what the summary, the folding and ``jaxcnn.interop`` walk).
- Command line: ``python -m jaxcnn.inspect resnet50 --help``.
"""

from jaxcnn.inspect._common import Call, random_variables, record_calls, resolve, small_input_shape
from jaxcnn.inspect.erf import EffectiveRF, effective_receptive_field
from jaxcnn.inspect.export import export_model, load_exported, save_exported
from jaxcnn.inspect.fold_bn import (
    FoldedModel,
    FoldReport,
    find_conv_bn_pairs,
    fold_batchnorm,
    fold_report,
    time_forward,
)
from jaxcnn.inspect.pictures import (
    attention_map,
    capture_outputs,
    default_layers,
    plot_attention,
    plot_feature_maps,
    plot_filters,
    sample_image,
)
from jaxcnn.inspect.receptive_field import FieldAt, ReceptiveFields, RFRow, receptive_fields
from jaxcnn.inspect.summary import Summary, SummaryRow, summary, xla_flops
from jaxcnn.layers.sizes import (
    conv_output_size,
    pool_output_size,
    same_output_size,
    transposed_output_size,
)

__all__ = [
    "Call",
    "attention_map",
    "capture_outputs",
    "conv_output_size",
    "default_layers",
    "effective_receptive_field",
    "EffectiveRF",
    "export_model",
    "FieldAt",
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "fold_report",
    "FoldedModel",
    "FoldReport",
    "load_exported",
    "plot_attention",
    "plot_feature_maps",
    "plot_filters",
    "pool_output_size",
    "random_variables",
    "receptive_fields",
    "record_calls",
    "resolve",
    "ReceptiveFields",
    "RFRow",
    "same_output_size",
    "sample_image",
    "save_exported",
    "small_input_shape",
    "summary",
    "Summary",
    "SummaryRow",
    "time_forward",
    "transposed_output_size",
    "xla_flops",
]
