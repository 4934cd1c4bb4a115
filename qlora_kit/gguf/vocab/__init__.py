"""The tokenizer of a GGUF file: candidate vocabularies, and the one llama.cpp proves equal to the HF tokenizer."""
