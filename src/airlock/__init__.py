"""airlock: fine-tune, evaluate, sign, promote and serve LoRA adapters on an air-gapped appliance."""

__version__ = "0.1.0"
