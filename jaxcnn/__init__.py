"""jaxcnn: convolutional network architectures in JAX/Flax with XLA-compiled training."""

__version__ = "0.1.0"

from jaxcnn.models import create_model, list_models, model_info  # noqa: E402

__all__ = ["__version__", "create_model", "list_models", "model_info"]
