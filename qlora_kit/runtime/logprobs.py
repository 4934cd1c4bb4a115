"""Per-token log-probabilities of the LM head in plain torch: the CPU path of TRL's fused LM head.

TRL 1.15's preference trainers (DPO, KTO, ORPO, CPO/SimPO) score completions through `add_fused_lm_head`, whose
projection is a Triton kernel (`trl.kernels.ChunkedLogProbFunction`). Triton has no CPU backend, so on a CPU-only
machine TRL leaves the kernel as None and the first training step fails with "'NoneType' object has no attribute
'apply'". `PlainLogProbs` computes the same five outputs (log-prob of the target, entropy, log sum p^2, mean logit,
target-is-argmax) with the same transform (logit scale, soft-capping, temperature), tile by tile over the tokens;
each tile is recomputed in the backward pass (activation checkpointing), so the [tokens, vocab] logits never exist
whole, as with the kernel. A tile holds at most TILE_LOGITS logits (170 tokens of a 49k vocabulary, 55 of a 152k
one, at most 1024): its backward keeps ~22 bytes a logit alive (benchmarks/RESULTS.md, "GRPO memory"), so a fixed
1024-token tile cost 3.2 GiB on a 152k vocabulary, more than the full logits of a short completion batch. Installed by `runtime.compat.cpu_fused_lm_head` only where the kernel is missing.
"""

from __future__ import annotations

TOKENS_PER_TILE = 1024  # the most tokens a tile takes
TILE_LOGITS = 8 * 2**20  # the most logits a tile holds (32 MiB in fp32)


def tokens_per_tile(vocab: int) -> int:
    """Tokens per tile for a vocabulary: TILE_LOGITS' worth, between 16 and TOKENS_PER_TILE."""
    return max(16, min(TOKENS_PER_TILE, TILE_LOGITS // max(vocab, 1)))


def _tile(hidden, weight, bias, targets, temperature, softcap, logit_scale):
    import torch

    z = (hidden @ weight.t()).float()
    if bias is not None:
        z = z + bias.float()
    z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    target = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logp = z - log_z.unsqueeze(-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    log_sum_sq = torch.logsumexp(2 * logp, dim=-1)
    before = torch.arange(z.shape[-1], device=z.device).unsqueeze(0) < targets.unsqueeze(-1)
    first_max = (target >= z.max(-1).values) & (target > z.masked_fill(~before, float("-inf")).max(-1).values)
    return target - log_z, entropy, log_sum_sq, z.mean(-1), first_max


class PlainLogProbs:
    """Drop-in for `ChunkedLogProbFunction.apply` (same arguments, same tuple of five, None where not asked)."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None, logit_scale=1.0,
              outputs=("log_probs",)):
        import torch
        from torch.utils.checkpoint import checkpoint

        del chunk_size  # the kernel's vocabulary tile; a CPU matmul takes the whole vocabulary at once
        parts: list[tuple] = []
        step = tokens_per_tile(weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            end = start + step
            args = (hidden[start:end], weight, bias, targets[start:end], temperature, final_logit_softcapping,
                    logit_scale)
            grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
            parts.append(checkpoint(_tile, *args, use_reentrant=False) if grad else _tile(*args))
        if not parts:  # no scored token in the batch: empty outputs that still connect to the graph
            empty = hidden.sum(-1)[:0].float()
            parts = [(empty, empty, empty, empty.detach(), empty.detach().bool())]
        logprobs, entropy, log_sum_sq, mean_logits, is_top1 = (torch.cat(x) for x in zip(*parts))
        return (logprobs, entropy if "entropy" in outputs else None,
                log_sum_sq.detach() if "log_sum_sq_probs" in outputs else None,
                mean_logits.detach() if "mean_logits" in outputs else None,
                is_top1 if "is_top1" in outputs else None)
