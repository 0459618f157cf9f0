"""pytest fixtures that start the real vLLM server (filled in by the serving tests)."""
