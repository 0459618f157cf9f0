"""Evaluation: the candidate adapter against the base model on a held-out set."""
