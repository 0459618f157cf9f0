"""Base models: the reference model airlock builds for itself, and the catalog of model folders."""
