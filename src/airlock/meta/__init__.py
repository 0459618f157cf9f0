"""Metadata: one SQLite database (WAL) for datasets, runs, models, keys, aliases and audit."""

from airlock.meta.db import Meta, open_meta

__all__ = ["Meta", "open_meta"]
