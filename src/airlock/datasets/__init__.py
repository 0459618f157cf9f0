"""Training datasets: JSONL in chat, prompt/completion, ShareGPT or Alpaca format, validated, stored by digest."""

from airlock.datasets.records import ALPACA, CHAT, FORMATS, PROMPT_COMPLETION, SHAREGPT
from airlock.datasets.service import OPERATOR_READER, Reader, add_dataset, get_dataset, list_datasets, load_records
from airlock.datasets.validate import MAX_PROBLEMS, ValidatedDataset, validate_bytes, validate_dataset

__all__ = [
    "ALPACA", "CHAT", "FORMATS", "SHAREGPT", "MAX_PROBLEMS", "OPERATOR_READER", "PROMPT_COMPLETION", "Reader",
    "ValidatedDataset", "add_dataset",
    "get_dataset", "list_datasets", "load_records", "validate_bytes", "validate_dataset",
]
