"""The model stage: resolve the base model, load it in 4-bit through a backend, attach LoRA adapters."""
