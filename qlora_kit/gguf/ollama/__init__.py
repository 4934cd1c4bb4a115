"""Ollama Modelfiles written next to the GGUF files."""
