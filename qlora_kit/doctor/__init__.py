"""`qlora-kit doctor`: what this machine is and what will work on it, as one typed report (`collect`).

Read from files and package metadata, not by importing the heavy libraries: /proc for the CPU and memory,
importlib.metadata for versions, nvidia-smi for GPUs, llama.cpp's own system info (loading its library is cheap).
No network, no training, well under 2 s without a GPU.
"""
