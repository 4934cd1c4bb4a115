"""Verification of a GGUF file with llama.cpp against the HF model's streamed reference logits."""
