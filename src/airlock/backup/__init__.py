"""Backing up an appliance's state and restoring it: `airlock backup DIR`, `airlock restore DIR`."""
