"""The merge stage: LoRA adapter + base checkpoint -> a plain 16-bit model, streamed and verified."""
