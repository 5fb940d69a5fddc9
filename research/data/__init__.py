"""Datasets as in-memory uint8 arrays: local image folders and archives, MNIST IDX files,
the original CIFAR batches, or tensorflow-datasets; decoded once and cached.

    dataset = load_dataset("mnist", "/path/to/datasets", validation_size=0.1)
"""

from research.data.cache import cache_dir
from research.data.loader import load_dataset
from research.data.types import (CACHE_DIR_ENV, DATA_DIR_ENV, CorruptDataError, DataError,
                                 DataNotFoundError, Dataset, Split)

__all__ = ["CACHE_DIR_ENV", "DATA_DIR_ENV", "CorruptDataError", "DataError",
           "DataNotFoundError", "Dataset", "Split", "cache_dir", "load_dataset"]
