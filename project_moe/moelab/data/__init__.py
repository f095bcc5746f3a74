"""Datasets as whole tensors (images.py, text.py, tables.py), the records they share (types.py), and
the batch loader that cuts, augments and normalises batches on the device (loader.py).

Each name below is imported from its module on first use: the models read ``data.types`` (the byte
vocabulary) without loading the table code and pandas."""
from ..exports import lazy_exports

_HOMES = {
    **dict.fromkeys(["DataError", "Dataset", "Split", "VOCAB", "PAD"], "types"),
    **dict.fromkeys(["DATASET_CHOICES", "MNIST_MD5", "channel_stats", "check_dataset_spec", "load_dataset",
                     "resolve_data_dir", "split_train_val"], "images"),
    **dict.fromkeys(["GraphDataset", "GraphSplit", "is_graph_dataset", "load_graph_dataset"], "graphs"),
    **dict.fromkeys(["BatchLoader", "GraphLoader", "StreamLoader", "TableLoader", "apply_augment", "augment_batch", "derive_seed",
                     "draw_augment_params", "loader_for"], "loader"),
    **dict.fromkeys(["IMPUTE_CHOICES", "TASK_CHOICES", "TableDataset", "TableOptions", "TableSplit",
                     "is_table_dataset", "load_table_dataset", "target_bins"], "tables"),
    **dict.fromkeys(["KINDS", "Stream", "TextDataset", "is_language_dataset", "is_text_dataset", "load_text_dataset"],
                    "text"),
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
