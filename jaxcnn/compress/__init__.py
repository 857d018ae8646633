"""Model compression and combination: int8 post-training quantization (through Qwix),
magnitude pruning (masks, one-shot or gradual, as an optax transform) and ensembles.

Depends on ``jaxcnn.utils`` only (and optax, Qwix); a pruning mask is part of the optimizer
state, so any training loop that saves its optimizer state carries it. See docs/compression.md
for the measured trade-offs.
"""

from jaxcnn.compress.ensemble import Ensemble, ensemble_probs
from jaxcnn.compress.prune import (
    PolynomialSparsity,
    PruningState,
    apply_masks,
    get_masks,
    magnitude_masks,
    magnitude_pruning,
    polynomial_sparsity,
    prunable_paths,
    sparsity_report,
)
from jaxcnn.compress.quantize import (
    MODES,
    QuantizedModel,
    quantize,
    quantize_weights,
    tree_nbytes,
)

__all__ = [
    "MODES",
    "Ensemble",
    "PolynomialSparsity",
    "PruningState",
    "QuantizedModel",
    "apply_masks",
    "ensemble_probs",
    "get_masks",
    "magnitude_masks",
    "magnitude_pruning",
    "polynomial_sparsity",
    "prunable_paths",
    "quantize",
    "quantize_weights",
    "sparsity_report",
    "tree_nbytes",
]
