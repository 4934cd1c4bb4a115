"""qlora_kit: recipe-driven QLoRA fine-tuning on Unsloth + bitsandbytes.

Importing this package is cheap on purpose: torch, transformers and Unsloth are imported only by the stage that
needs them, so `qlora-kit --help` and `qlora-kit validate` answer in well under a second.
"""

__version__ = "0.1.0"
