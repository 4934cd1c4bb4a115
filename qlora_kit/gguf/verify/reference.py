"""The HF reference logits for verification, computed with bounded memory straight from the safetensors shards.

Loading the merged model whole in float32 costs 2x a bf16 checkpoint (an 8B model: 32 GB) next to the GGUF that
llama.cpp maps. Here transformers' own model code runs on an empty (meta-device) model, and only these hold weights:
  - the input embedding: only the rows of the probe tokens (ids are remapped into that small table);
  - one decoder layer at a time, loaded in float32 for all probe rows, then dropped;
  - the output projection, applied in row blocks of the vocabulary (each block read once for all probe rows);
  - the small rest (final norm, rotary tables, scales).
So every architecture-specific step (embedding scale, masks, rotary tables, final norm, logit soft-capping) is the
model class's own code, run unchanged. How the layers are streamed without rewriting each model's forward: pass 1
runs the model's forward with every decoder layer replaced by a recorder that keeps the arguments the model passes
to it (masks, rotary cos/sin, position ids) and stops after the last one; then each real layer is loaded once and
applied to every row with exactly those arguments; pass 2 runs the forward again with recorders that hand back the
final hidden states, up to the head, whose input is kept; the head is computed for all rows block by block; pass 3
hands those logits back through the forward, so the model's own soft-capping (Gemma) applies.
On a GPU when there is one; otherwise CPU. Same numbers as a whole-model float32 forward
(tests/test_export_memory.py compares them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qlora_kit.errors import StageError
from qlora_kit.merging.checkpoint import Checkpoint, row_blocks

HEAD_BLOCK_BYTES = 16 * 2**20  # fp32 bytes of one block of output-projection rows


class _Stop(Exception):
    """Raised by the last recorder in pass 1: nothing after the decoder layers is needed yet."""


def reference_logits(model_dir: str | Path, rows: list[list[int]], device: str | None = None,
                     block_bytes: int = HEAD_BLOCK_BYTES) -> list[np.ndarray]:
    """float32 logits (tokens x vocab) of the HF model in `model_dir` for each row of token ids."""
    from qlora_kit.runtime.compat import return_large_frees_to_the_os

    return_large_frees_to_the_os()  # block-sized buffers come and go (measured: +120 MiB of heap without it)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.no_grad():
        stream = _Streamed(_meta_model(model_dir), Checkpoint(model_dir), device, block_bytes)
        hidden, kwargs = stream.record(rows)
        for i, layer in enumerate(stream.layers):
            stream.load_layer(i)
            for r in range(len(rows)):
                out = layer(hidden[r], **kwargs[r][i])
                hidden[r] = out[0] if isinstance(out, tuple) else out
            layer.to_empty(device="meta")  # drop this layer's weights before loading the next
        return stream.finish(rows, hidden)


def _meta_model(model_dir):
    """The model class with no weights allocated (float32, transformers' default attention)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer `index`: records its call (pass 1) or hands back the final state (pass 2)."""

    def __init__(self, stream: "_Streamed", index: int):
        super().__init__()
        object.__setattr__(self, "stream", stream)  # not a submodule: the recorder owns no weights
        self.index = index

    def __getattr__(self, name):  # e.g. `attention_type`, which some model forwards read from the layer
        if name == "stream":
            raise AttributeError(name)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.stream.layers[self.index], name)

    def forward(self, hidden_states, *args, **kwargs):
        s = self.stream
        last = self.index == len(s.layers) - 1
        if s.final is not None:
            return s.final if last else hidden_states
        if self.index == 0:
            s.first = hidden_states
        s.calls.append(kwargs)
        if last:
            raise _Stop
        return hidden_states


class _Head(torch.nn.Module):
    """Stands in for the output projection: captures its input (pass 2), or hands back logits computed for all
    rows at once by `_Streamed.project` (pass 3), so the model's own code still applies what follows the head."""

    def __init__(self, stream: "_Streamed"):
        super().__init__()
        object.__setattr__(self, "stream", stream)

    def forward(self, hidden):
        if self.stream.logits is not None:
            return self.stream.logits
        self.stream.head_input = hidden
        raise _Stop


class _Streamed:
    def __init__(self, model, ckpt: Checkpoint, device, block_bytes: int):
        self.model, self.ckpt, self.device = model, ckpt, device
        self.prefix, layer_list = _decoder_layers(model)
        self.layers = list(layer_list)
        self.embed = model.get_input_embeddings()
        self.embed_name = _param_name(model, self.embed.weight)
        self.head_name = "lm_head.weight" if "lm_head.weight" in ckpt else self.embed_name  # tied: the embedding
        self.block_bytes = block_bytes
        _replace_module(model, model.get_output_embeddings(), _Head(self))
        self.embed.padding_idx = None  # the small table has other row numbers; padding only matters for training
        for i in range(len(self.layers)):
            layer_list[i] = _Recorder(self, i)
        self.final, self.first, self.calls, self.remap = None, None, [], {}
        self.head_input, self.logits = None, None
        self._load_rest()

    def _load_rest(self) -> None:
        """Small modules (final norm, rotary tables, embedding scale): weights from the checkpoint, non-persistent
        buffers computed as transformers initializes them after its own meta-device load."""
        for name, param in list(self.model.named_parameters()):
            if name != self.embed_name:
                _assign(self.model, name, self._tensor(name, param.shape))
        for name, buf in list(self.model.named_buffers()):
            if buf.is_meta:
                _assign(self.model, name, torch.empty_like(buf, device=self.device), buffer=True)
                self.model._init_weights(_owner(self.model, name))

    def _tensor(self, name: str, shape):
        if name not in self.ckpt:
            raise StageError(f"{self.ckpt.path}: tensor {name} is missing; cannot compute the reference logits")
        tensor = self.ckpt.get(name)
        if tuple(tensor.shape) != tuple(shape):
            raise StageError(f"{self.ckpt.path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                             f"{tuple(shape)}")
        return tensor.to(self.device, dtype=torch.float32 if tensor.is_floating_point() else tensor.dtype)

    def load_layer(self, i: int) -> None:
        layer = self.layers[i]
        for name, param in list(layer.named_parameters()):
            _assign(layer, name, self._tensor(f"{self.prefix}.{i}.{name}", param.shape))
        for name, buf in list(layer.named_buffers()):  # none in the supported architectures; computed if any
            if buf.is_meta:
                _assign(layer, name, torch.empty_like(buf, device=self.device), buffer=True)
                self.model._init_weights(_owner(layer, name))

    def record(self, rows: list[list[int]]):
        """Pass 1: per row, the first layer's input and every layer's keyword arguments."""
        needed = sorted({t for ids in rows for t in ids})
        table = torch.stack([self.ckpt.read_rows(self.embed_name, t, t + 1)[0] for t in needed])
        _assign(self.model, self.embed_name, table.to(self.device, dtype=torch.float32))
        self.remap = {t: i for i, t in enumerate(needed)}
        hidden, kwargs = [], []
        for ids in rows:
            self.calls, self.first = [], None
            try:
                self.model(input_ids=self._ids(ids), use_cache=False)
            except _Stop:
                pass
            hidden.append(self.first)
            kwargs.append(self.calls)
        return hidden, kwargs

    def _ids(self, ids):
        return torch.tensor([[self.remap[t] for t in ids]], device=self.device)

    def finish(self, rows, hidden) -> list[np.ndarray]:
        """Pass 2: the model's own final norm, up to the head; the head for all rows, reading each block of its
        rows once; pass 3: the model's own code after the head (soft-capping) on those logits."""
        inputs = []
        for ids, state in zip(rows, hidden):
            self.final = state
            try:
                self.model(input_ids=self._ids(ids), use_cache=False)
            except _Stop:
                inputs.append(self.head_input)
        out = []
        for ids, logits in zip(rows, self.project(inputs)):
            self.logits = logits
            out.append(self.model(input_ids=self._ids(ids), use_cache=False).logits[0].float().cpu().numpy())
        self.final, self.logits = None, None
        return out

    def project(self, inputs: list) -> list:
        """y = h @ W.T for every row's h, over row blocks of W read from the checkpoint (never W whole)."""
        rows, cols = self.ckpt.shape(self.head_name)
        tokens = torch.cat([h.reshape(-1, h.shape[-1]) for h in inputs])  # every row's tokens: W is read once
        out = torch.empty(len(tokens), rows, dtype=torch.float32, device=self.device)
        # Whole multiples of 64 rows: BLAS picks other kernels (other summation orders) for very thin blocks.
        for start, stop in row_blocks(rows, cols, self.block_bytes, unit=64):
            block = self.ckpt.read_rows(self.head_name, start, stop).to(self.device, dtype=torch.float32)
            out[:, start:stop] = torch.nn.functional.linear(tokens, block)
            del block
        parts, at = [], 0
        for h in inputs:
            n = h.numel() // h.shape[-1]
            parts.append(out[at:at + n].reshape(*h.shape[:-1], rows))
            at += n
        return parts


def _decoder_layers(model):
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList):
            return name, module
    raise StageError(f"{type(model).__name__}: no decoder layer list found; cannot stream the reference forward")


def _param_name(model, param) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


def _owner(root, dotted: str):
    module = root
    for part in dotted.split(".")[:-1]:
        module = getattr(module, part)
    return module


def _assign(root, dotted: str, value, buffer: bool = False) -> None:
    owner, leaf = _owner(root, dotted), dotted.rsplit(".", 1)[-1]
    if buffer:
        owner._buffers[leaf] = value
    else:
        owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)


def _replace_module(root, old, new) -> None:
    name = next(n for n, m in root.named_modules() if m is old)
    setattr(_owner(root, name), name.rsplit(".", 1)[-1], new)
