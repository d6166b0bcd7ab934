"""Task data: loaders for every ``task.kind``, deterministic splits and tokenization.

Importing the package registers the built-in loaders (HF formats, BIG-bench, local files).
"""

from w2s.data import bigbench, formats, local  # noqa: F401  (register the loaders)
from w2s.data.splits import SPLITS, make_splits
from w2s.data.tasks import (
    CONFLICT_REASON,
    DATA_SEED,
    DUPLICATE_REASON,
    DataError,
    TaskData,
    drop_duplicates,
    load_task,
    register_loader,
    supported_kinds,
)
from w2s.data.tokenize import Tokenized, keep_tokenized, load_tokenizer, tokenize

__all__ = [
    "CONFLICT_REASON",
    "DATA_SEED",
    "DUPLICATE_REASON",
    "SPLITS",
    "DataError",
    "TaskData",
    "Tokenized",
    "drop_duplicates",
    "keep_tokenized",
    "load_task",
    "load_tokenizer",
    "make_splits",
    "register_loader",
    "supported_kinds",
    "tokenize",
]
