"""Workflows: a YAML spec of stages from a fixed registry, run by the worker, recorded in SQLite."""
