"""Peak memory of a GRPO step (TRL 1.15's GRPOTrainer, as training/grpo.py builds it), phase by phase.

A step runs phases one after the other, each freeing what it made before the next starts, so the step's peak is
the held terms (weights, LoRA, optimizer states) plus the largest phase:

- generation: one `generate` call samples train.batch_size x steps_per_generation completions (TRL's
  generation_batch_size: one call serves every micro-step of a generation round) with gradient checkpointing switched
  off, so with a KV cache: 2 (k and v) x layers x kv_heads x head_dim values per token, in the compute dtype, for
  prompt + completion tokens of every sequence, and one layer's keys more (the cache grows by torch.cat, from the
  prefill on). Its peak is the larger of the prefill (the prompts' cache and one decoder layer's working set over
  every prompt token, the adapter active) and the last decoding step (the whole cache and the sampling's buffers for
  the last position only: the logits in the compute dtype, their float32 copy, softmax and sampling temporaries, 12
  + dtype bytes per vocabulary entry, measured on CPU), plus one dequantized 4-bit weight.
- old_logprob_forward: when grad_accum is not a multiple of steps_per_generation x num_iterations (TRL's rule; e.g.
  num_iterations > 1), the policy scores the round's completions once more without gradients, batch_size sequences
  at a time: one no_grad forward (methods.reference_bytes, the adapter active).
- reference_forward (grpo.beta > 0): the same no_grad forward through the reference. For a PEFT model TRL 1.15
  copies the adapter into a frozen one named "ref" (GRPOTrainer.__init__) and scores with it: the forward has an
  adapter active, and the copy is held all along (the `reference_adapter` term, the LoRA weights' size).
- training: batch_size sequences of prompt + completion, forward and backward as for SFT with those lengths, the
  completions' tokens scored by TRL's fused LM head (log-prob and entropy, in tiles): estimate.activation_terms.

The no_grad forwards run in the generation round, before the training forward: unlike DPO's reference forward they
never sit on top of saved activations.
"""

from __future__ import annotations

from qlora_kit.planner.methods import adapter_width, layer_working_bytes, reference_bytes

# Sampling's buffers per vocabulary entry of the last position, beyond the logits in the compute dtype: their
# float32 copy, the softmax and one more float32 temporary (transformers 5.17 `_sample`, TRL's defaults: no top-k,
# top-p 1, temperature 1; measured 16 bytes a logit at float32 with the profiler).
SAMPLING_FP32_BYTES = 12


def split_lengths(p) -> tuple[int, int]:
    """(prompt, completion) tokens of the sequences a step runs: seq_len is prompt + completion."""
    completion = min(p.completion_len, p.seq_len)
    return p.seq_len - completion, completion


def generation_bytes(shape, p, a: int) -> int:
    """Peak of one `generate` call above the held weights (see the module's docstring)."""
    prompt, completion = split_lengths(p)
    n = p.batch_size * p.steps_per_generation
    # The cache of every layer, and one layer's keys copied as the cache grows (torch.cat), from the prefill on.
    kv_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * a + shape.kv_heads * shape.head_dim * a
    prefill = n * prompt * kv_token + layer_working_bytes(shape, a, n * prompt, adapter_width(shape, p))
    last_step = n * (prompt + completion) * kv_token + n * shape.vocab_size * (a + SAMPLING_FP32_BYTES)
    dequantized = max(lin.numel for lin in shape.layer_linears) * a if p.load_in_4bit else 0
    return max(prefill, last_step) + dequantized


def grpo_phases(shape, p, a: int) -> dict[str, int]:
    """Bytes above the held terms of each phase but training (estimate.activation_terms counts that one)."""
    _, completion = split_lengths(p)
    phases = {"generation": generation_bytes(shape, p, a)}
    no_grad = reference_bytes(shape, p, a, p.batch_size * p.seq_len, p.batch_size * completion, adapter=True)
    if p.old_logprobs:
        phases["old_logprob_forward"] = no_grad
    if p.kl_reference:
        phases["reference_forward"] = no_grad
    return phases


def beyond_training(phases: dict[str, int]) -> dict[str, int]:
    """The estimate's terms for the phases other than training: what each needs beyond the largest phase before it
    (training first), so that the terms sum to the held terms plus the largest phase. A term is there (maybe 0)
    whenever its phase runs, as dpo's reference_forward is."""
    out, running = {}, phases["training"]
    for name, value in phases.items():
        if name == "training":
            continue
        out[name] = max(0, value - running)
        running = max(running, value)
    return out


def needs_old_logprobs(grad_accum: int, steps_per_generation: int, num_iterations: int) -> bool:
    """TRL 1.15 (`_generate_and_score_completions`): the old policy's log-probs are computed when the generation
    round does not end with an optimizer step; otherwise the loss uses the current ones, detached."""
    return grad_accum % (steps_per_generation * num_iterations) != 0


def grpo_fields(grpo, grad_accum: int, seq_len: int) -> dict:
    """PlanInput's grpo fields from the recipe's grpo section and the resolved accumulation (UsageError when the
    sequence leaves no room for a prompt)."""
    from qlora_kit.errors import UsageError

    if seq_len <= grpo.max_completion_length:
        raise UsageError(f"plan: a grpo sequence is prompt + completion, but the sequence length {seq_len} leaves no "
                         f"room for a prompt beside grpo.max_completion_length {grpo.max_completion_length}; raise "
                         "model.max_seq_length (or --seq-len) or lower grpo.max_completion_length")
    steps = grpo.steps_per_generation or grad_accum
    return {"completion_len": grpo.max_completion_length, "steps_per_generation": steps,
            "old_logprobs": needs_old_logprobs(grad_accum, steps, grpo.num_iterations), "kl_reference": grpo.beta > 0}


def describe_grpo(p, phases: dict[str, int]) -> str:
    """What the planner counted for a grpo step, in a line of `plan`'s output."""
    prompt, completion = split_lengths(p)
    no_grad = [name.removesuffix("_forward").replace("_", " ") for name in ("old_logprob_forward",
                                                                           "reference_forward") if name in phases]
    scoring = (f"no_grad forwards ({' and '.join(no_grad)}) {p.batch_size} sequences at a time" if no_grad
               else "no old-policy or reference forward")
    if p.kl_reference:
        scoring += ", the reference a frozen copy of the adapter (TRL's 'ref', held all along)"
    sizes = ", ".join(f"{name.replace('_', ' ')} {_size(value)}" for name, value in phases.items())
    return (f"grpo: phases one after the other, the step peaks in the largest ({sizes} above the held terms): sampling "
            f"{p.batch_size * p.steps_per_generation} completions in one generate call (KV cache of {prompt} prompt + "
            f"{completion} completion tokens each, the last position's logits); {scoring}; training {p.batch_size} "
            f"sequences of {prompt} + {completion} tokens, the completions scored in tiles (TRL's fused LM head); "
            f"prompt tokens: the sequence length minus grpo.max_completion_length (an upper bound)")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
