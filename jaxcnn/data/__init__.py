"""Datasets: random-access sources (TFDS array_record, image folders, IDX files, in-memory
arrays) with their published splits (:func:`load_splits`), per-example transforms and grain
iterators with exact epochs, resumable state and per-process sharding.

The whole-array helpers of the old loops (``load_dataset``, ``preprocess``, ``split``,
``batches``, ``augment_batch``, ``prefetch_to_device``) stay until those loops are gone;
``batches`` is the project's one in-memory padded batcher.
"""

from jaxcnn.data.idx import load_idx_folder, open_idx, read_idx
from jaxcnn.data.iterators import (
    EvalIterator,
    TrainIterator,
    eval_iterator,
    num_eval_batches,
    steps_per_epoch,
    train_iterator,
)
from jaxcnn.data.legacy import Dataset, load_dataset
from jaxcnn.data.pipeline import (
    augment_batch,
    batches,
    num_batches,
    prefetch_to_device,
    preprocess,
    split,
)
from jaxcnn.data.sources import (
    ArraySource,
    DataError,
    FolderSource,
    IdxSource,
    Repeat,
    Source,
    Subset,
    TfdsSource,
    bundled_mnist_dir,
    default_mnist_dir,
)
from jaxcnn.data.splits import Splits, load_splits, stratified_holdout
from jaxcnn.data.transforms import (
    CONFIG_DEFAULTS,
    Preprocess,
    imagenet_eval,
    preprocess_from_config,
    splits_from_config,
)

__all__ = [
    "DataError",
    "CONFIG_DEFAULTS",
    "EvalIterator",
    "Preprocess",
    "TrainIterator",
    "eval_iterator",
    "imagenet_eval",
    "num_eval_batches",
    "preprocess_from_config",
    "splits_from_config",
    "steps_per_epoch",
    "train_iterator",
    "ArraySource",
    "Dataset",
    "FolderSource",
    "IdxSource",
    "Repeat",
    "Source",
    "Splits",
    "Subset",
    "TfdsSource",
    "augment_batch",
    "batches",
    "bundled_mnist_dir",
    "default_mnist_dir",
    "load_dataset",
    "load_idx_folder",
    "load_splits",
    "num_batches",
    "open_idx",
    "prefetch_to_device",
    "preprocess",
    "read_idx",
    "split",
    "stratified_holdout",
]
