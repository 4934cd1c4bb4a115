"""Native code: every llama.cpp model load (`loader`), and what happens when native code kills a process (`crash`).

llama.cpp runs in C++ inside the calling process: a bug there (a CPU-specific kernel, a tokenizer that throws) ends
the process with a signal, past every Python `except`. So each llama.cpp load goes through one module that applies
the known workarounds (compat.keep_llama_cpp_off_amx), and each process that runs native work is watched by a
parent that turns a death by signal into one line naming the signal, the stage and the file.
"""
