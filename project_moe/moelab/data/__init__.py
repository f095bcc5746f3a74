"""Datasets as whole tensors (images.py, text.py, tables.py), and the batch loader that cuts, augments and
normalises batches on the device (loader.py)."""
from .images import (
                     DATASET_CHOICES,
                     MNIST_MD5,
                     DataError,
                     Dataset,
                     Split,
                     channel_stats,
                     check_dataset_spec,
                     load_dataset,
                     resolve_data_dir,
                     split_train_val,
)
from .loader import (
                     BatchLoader,
                     StreamLoader,
                     TableLoader,
                     apply_augment,
                     augment_batch,
                     derive_seed,
                     draw_augment_params,
                     loader_for,
)
from .tables import (
                     IMPUTE_CHOICES,
                     TASK_CHOICES,
                     TableDataset,
                     TableOptions,
                     TableSplit,
                     is_table_dataset,
                     load_table_dataset,
                     target_bins,
)
from .text import KINDS, Stream, TextDataset, is_language_dataset, is_text_dataset, load_text_dataset

__all__ = ["DATASET_CHOICES", "MNIST_MD5", "DataError", "Dataset", "Split", "channel_stats", "check_dataset_spec",
           "load_dataset", "resolve_data_dir", "split_train_val", "BatchLoader", "apply_augment", "augment_batch",
           "derive_seed", "draw_augment_params", "StreamLoader", "loader_for", "TextDataset", "Stream", "KINDS",
           "is_text_dataset", "is_language_dataset", "load_text_dataset",
           "TableLoader", "IMPUTE_CHOICES", "TASK_CHOICES", "TableDataset", "TableOptions", "TableSplit",
           "is_table_dataset", "load_table_dataset", "target_bins"]
