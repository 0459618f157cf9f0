"""The promotion gate: nothing is served unless its signature, bytes and scores check out."""
