"""Datasets as in-memory arrays (uint8 pixels; float32 for MNIST-1D): local image folders
and archives, MNIST IDX files, the original CIFAR batches, tensorflow-datasets, or a
checksummed download of the original files; decoded once and cached. MNIST-1D is generated
by its package (docs/data.md).

    dataset = load_dataset("mnist", "/path/to/datasets", validation_size=0.1)
"""

from research.data.cache import cache_dir
from research.data.loader import load_dataset
from research.data.types import (CACHE_DIR_ENV, DATA_DIR_ENV, CorruptDataError, DataError,
                                 DataNotFoundError, Dataset, Split)

__all__ = ["CACHE_DIR_ENV", "DATA_DIR_ENV", "CorruptDataError", "DataError",
           "DataNotFoundError", "Dataset", "Split", "cache_dir", "load_dataset"]
