"""Peak bytes of scoring tokens: the LM head's logits (or log-prob tiles) and the loss, per backend and method.

- sft: each backend's loss (Unsloth's chunked cross-entropy; on a GPU hf trains through TRL's fused LM head; on
  a CPU hf uses the model's own loss).
- dpo, kto, grpo: TRL's fused LM head (TRL patches the model's forward), over the labelled positions only (grpo:
  the completions' tokens): tiles, never the logits. Its kernel: TRL's Triton one on a GPU, runtime/logprobs.py on a CPU, Unsloth's own with Unsloth.
- orpo, simpo: the model's own forward returns the full logits of both sequences, which the trainers score.
"""

from __future__ import annotations

UNSLOTH_CE_CAP = 4 * 10**9
UNSLOTH_CPU_CE_CHUNK = 16 * 2**20  # unsloth_zoo.cpu.ops (UNSLOTH_CPU_CE_CHUNK_ELEMENTS)
TRL_TILE_TOKENS, TRL_TILE_VOCAB = 4096, 32768  # trl.kernels.chunked_logprob, trl.trainer.utils (1.15)
# runtime/logprobs.py's fp32 tile (the hf backend on CPU), per logit: in backward (recomputed under checkpoint) the
# logits, log-softmax, probabilities and doubled log-probs that autograd saves and the gradients flowing back
# through them; under no_grad (the reference) the temporaries alive at once. Unsloth's CPU kernel needs 8 (a chunk's
# logits and probabilities). All measured with the profiler (benchmarks/RESULTS.md, "Preference tuning").
CPU_TILE_BYTES, CPU_TILE_NO_GRAD_BYTES, UNSLOTH_CPU_TILE_BYTES = 22, 20, 8
# ORPO and SimPO, per logit of both sequences: the logits, the fp32 log-softmax saved for backward, the logits'
# gradient and the cross-entropy's copy of the chosen half (ORPO).
FULL_LOGITS_BYTES = 16


def head_bytes(shape, method: str, backend: str, device: str, dtype_bytes: int, tokens: int, scored: int) -> int:
    """Peak bytes of scoring a step run with gradients: `tokens` tokens, of which `scored` have a label."""
    if method in ("dpo", "kto", "grpo"):
        # TRL copies the scored rows' hidden states out (hidden[labels != -100]) before the tiles.
        return scored * shape.hidden * dtype_bytes + fused_head_bytes(shape, backend, device, dtype_bytes, scored)
    if method in ("orpo", "simpo"):
        return tokens * shape.vocab_size * FULL_LOGITS_BYTES
    return sft_loss_bytes(shape, backend, device, dtype_bytes, tokens)


def fused_head_bytes(shape, backend: str, device: str, a: int, scored: int, grad: bool = True) -> int:
    """TRL's fused LM head over `scored` tokens (only labelled positions are projected): a tile, never the logits.
    Which kernel fills it depends on the device and the backend (Unsloth installs its own on import)."""
    vocab = shape.vocab_size
    if device == "cuda" and backend == "unsloth":
        # unsloth_zoo.fused_losses.fused_linear: a frozen head's tiled forward forms the hidden-state gradient as
        # it goes (fp32, tokens x hidden); its tiles are taken as TRL's. Not yet measured on a GPU.
        tile = min(scored, TRL_TILE_TOKENS) * min(vocab, TRL_TILE_VOCAB) * 4
        return tile + (scored * shape.hidden * 4 if grad else 0)
    if device == "cuda":
        # TRL's [4096 tokens, 32768 columns] tile in fp32 with an fp32 accumulator beside it in training (as for
        # SFT on hf); a no_grad forward (the reference) needs the tile alone.
        return min(scored, TRL_TILE_TOKENS) * min(vocab, TRL_TILE_VOCAB) * (8 if grad else 4)
    if backend == "unsloth":
        # unsloth_zoo.cpu.ops: row chunks of 16 Mi logits, 8 bytes a logit, the next chunk allocated before the
        # previous one is freed; the hidden-state gradient (tokens x hidden) is formed in forward and kept.
        rows = max(1, UNSLOTH_CPU_CE_CHUNK // vocab)
        return min(scored, 2 * rows) * vocab * UNSLOTH_CPU_TILE_BYTES + (scored * shape.hidden * a if grad else 0)
    from qlora_kit.runtime.logprobs import tokens_per_tile

    return min(scored, tokens_per_tile(vocab)) * vocab * (CPU_TILE_BYTES if grad else CPU_TILE_NO_GRAD_BYTES)


def sft_loss_bytes(shape, backend: str, device: str, a: int, tokens: int) -> int:
    """Peak bytes of the LM head's logits and the SFT loss, which each backend computes differently (a: the
    compute dtype's bytes)."""
    vocab = shape.vocab_size
    if backend == "unsloth" and device == "cuda":
        # Unsloth's chunked cross-entropy budgets 16 bytes per logit and splits the rows into as many equal chunks
        # as keep one chunk under 4 GB (unsloth_zoo.fused_losses: _CE_BYTES_PER_LOGIT, _CE_TARGET_GB_CAP; it also
        # caps a chunk at half the free memory, which only matters on a nearly full GPU). The cap itself is used
        # once there are several chunks (an upper bound that keeps memory monotonic in tokens, which the
        # largest-fit search relies on).
        return min(tokens * vocab * 16, UNSLOTH_CE_CAP)
    if backend == "unsloth":
        # Unsloth's CPU loss (unsloth_zoo.cpu.ops) computes logits in row chunks of 16 Mi elements in fp32, forming
        # the hidden-state gradient (tokens x hidden) as it goes; the next chunk is allocated before the previous
        # one is freed, so two chunks coexist once there are several.
        rows = max(16, UNSLOTH_CPU_CE_CHUNK // vocab)
        chunk = min(tokens, rows) * vocab * 4
        return chunk * (2 if tokens > rows else 1) + tokens * shape.hidden * a
    if device == "cuda":
        # hf on a GPU trains through TRL 1.15's fused LM head (SFTTrainer always installs it).
        return fused_head_bytes(shape, backend, device, a, tokens)
    # On CPU the hf backend uses the model's own loss (TRL's fused head is a Triton kernel). Its peak is the start
    # of backward: the fp32 log-softmax saved for backward, its gradient, and the logits' gradient (12 bytes per
    # logit); a 16-bit model also has the gradient cast back to its dtype, and soft-capped logits (Gemma 2) keep
    # their tanh output (4 more, measured).
    return tokens * vocab * (12 + (a if a < 4 else 0) + (4 if shape.logit_softcap else 0))
