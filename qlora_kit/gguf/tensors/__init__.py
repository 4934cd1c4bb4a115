"""The tensors of a GGUF file: architectures, quantization types and llama.cpp's per-tensor policy, the streamed
conversion, and the disk and memory it needs."""
