"""Training: TrainState, losses, jit-compiled steps, optimizers, the fit loop."""

from jaxcnn.train.loop import DEFAULTS, evaluate, fit, load_data  # noqa: E402
from jaxcnn.train.losses import classification_metrics, confusion_matrix, cross_entropy
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import eval_step_fn, make_eval_step, make_train_step, train_step_fn

__all__ = [
    "DEFAULTS",
    "TrainState",
    "classification_metrics",
    "confusion_matrix",
    "create_train_state",
    "cross_entropy",
    "eval_step_fn",
    "evaluate",
    "fit",
    "load_data",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "train_step_fn",
]
