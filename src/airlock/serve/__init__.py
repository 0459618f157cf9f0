"""Serving: the vLLM server process and runtime LoRA adapters (`airlock.serve.vllm_server`)."""
