"""Datasets: sources (TFDS, scikit-learn digits, IDX files, image folders), preprocessing,
static-shape batching and device prefetch."""

from jaxcnn.data.idx import load_idx_folder, read_idx
from jaxcnn.data.pipeline import (
    augment_batch,
    batches,
    num_batches,
    prefetch_to_device,
    preprocess,
    split,
)
from jaxcnn.data.sources import Dataset, default_mnist_dir, load_dataset

__all__ = [
    "Dataset",
    "augment_batch",
    "batches",
    "default_mnist_dir",
    "load_dataset",
    "load_idx_folder",
    "num_batches",
    "prefetch_to_device",
    "preprocess",
    "read_idx",
    "split",
]
