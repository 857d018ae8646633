"""Tasks for the one training engine (:class:`jaxcnn.train.Trainer`): what differs between
classification, segmentation and GAN training (loss, metrics, evaluation, state); everything
they share (the loop, checkpoints, resume, metrics files) is the engine's."""

from jaxcnn.tasks.classification import (
    AUGMENT_FIELDS,
    CLASSIFICATION_FIELDS,
    DATA_FIELDS,
    Classification,
)
from jaxcnn.tasks.gan import GAN, GAN_FIELDS
from jaxcnn.tasks.segmentation import SEGMENTATION_FIELDS, Segmentation

__all__ = [
    "AUGMENT_FIELDS",
    "CLASSIFICATION_FIELDS",
    "Classification",
    "DATA_FIELDS",
    "GAN",
    "GAN_FIELDS",
    "SEGMENTATION_FIELDS",
    "Segmentation",
]
