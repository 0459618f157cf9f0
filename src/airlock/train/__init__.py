"""Fine-tuning: LoRA on a base model with PEFT, as one readable recipe."""
