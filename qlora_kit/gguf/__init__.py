"""The export stage: merged 16-bit model -> GGUF files llama.cpp and Ollama load, verified."""
