"""`qlora-kit eval`: did fine-tuning help? Base vs few-shot prompting vs adapter vs merged vs GGUF, one report."""
