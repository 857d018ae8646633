"""Training: the one engine (:class:`Trainer` runs a :class:`Task`; the tasks are in
:mod:`jaxcnn.tasks`), its config schema, ``TrainState``, losses, jit-compiled steps and
optimizers."""

from jaxcnn.train.config import ConfigError, default_config
from jaxcnn.train.losses import classification_metrics, confusion_matrix, cross_entropy
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import eval_step_fn, make_eval_step, make_train_step, train_step_fn
from jaxcnn.train.trainer import Context, NonFiniteError, ResumeError, Task, Trainer

__all__ = [
    "ConfigError",
    "Context",
    "NonFiniteError",
    "ResumeError",
    "Task",
    "TrainState",
    "Trainer",
    "classification_metrics",
    "confusion_matrix",
    "create_train_state",
    "cross_entropy",
    "default_config",
    "eval_step_fn",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "train_step_fn",
]
