"""What each train.method runs per row (TRL 1.15's trainers, as training/preference.py wires them), for the planner
and for the bench's MFU:

- sft: one sequence, forward and backward.
- dpo: the chosen and the rejected sequence in one batch (2 x batch_size sequences, each prompt + answer, at most
  max_seq_length), forward and backward; then, unless preference.precompute_ref_log_probs, the reference forward
  of the same batch (adapter disabled, no_grad) while the policy's saved activations are still held. It stores
  nothing: it costs one layer's working set plus its LM head's log-prob tile, not a second copy of activations.
- orpo, simpo: the same 2 sequences, no reference.
- kto: one sequence per row with gradients; the KL sequence (the prompt with another row's completion) is a no_grad
  forward of the policy before it, and the reference scores both (two no_grad forwards, one after the other)
  after it. Activations are stored for one sequence per row, not two.
- grpo: one sequence (prompt + sampled completion) per completion with gradients; before it, in phases of their
  own, the sampling (`generate`: one forward of each sequence's tokens) and the no_grad forwards of the old policy
  and of the reference (planner/grpo.py).

The LM head scores only the answers' tokens; `plan` counts every token as scored (PlanInput.scored_share 1.0: an
upper bound, exact for a short prompt), the bench gives its rows' real share.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_kit.planner.scoring import fused_head_bytes


@dataclass(frozen=True)
class MethodRuns:
    grad_sequences: int  # sequences per row run forward and backward (their activations are saved)
    reference_batch: int  # sequences per row in one reference forward (transient, no_grad); 0: no reference
    reference_forwards: int  # no_grad forwards per row by the reference, in all
    policy_no_grad: int  # no_grad forwards per row by the policy itself (KTO's KL sequence)


RUNS = {
    "sft": MethodRuns(1, 0, 0, 0),
    "dpo": MethodRuns(2, 2, 2, 0),
    "orpo": MethodRuns(2, 0, 0, 0),
    "simpo": MethodRuns(2, 0, 0, 0),
    "kto": MethodRuns(1, 1, 2, 1),
    # The generation counts as one no_grad forward of each sequence; its phases are planner/grpo.py's.
    "grpo": MethodRuns(1, 0, 0, 1),
}


def runs(method: str, precompute_ref: bool = False) -> MethodRuns:
    r = RUNS[method]
    if precompute_ref and r.reference_batch:
        # Scored once before training: no reference forward in a step.
        return MethodRuns(r.grad_sequences, 0, 0, r.policy_no_grad)
    return r


def no_grad_forwards_per_token(method: str, precompute_ref: bool = False) -> float:
    """Forward passes without backward, per token run with gradients (what MFU counts beyond forward + backward):
    dpo's reference forward of both sequences, kto's KL forward and the reference's two."""
    r = runs(method, precompute_ref)
    return (r.reference_forwards + r.policy_no_grad) / r.grad_sequences


def layer_working_bytes(shape, dtype_bytes: int, tokens: int, adapter_out: int = 0) -> int:
    """Peak of one decoder layer in a no_grad forward of `tokens` tokens: its MLP product, i.e. the layer's input and
    its post-attention sum, the normed input, the activation, the up output and their product (4 hidden + 3
    intermediate per token: the profiled CPU step agrees to 1%; q, k and v take its place for an architecture whose
    attention is wider than its MLP). With the adapter active (adapter_out: the widest adapted projection's output),
    LoRA's output beside the base projection's adds one such tensor (measured on CPU: + intermediate)."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return tokens * dtype_bytes * (4 * shape.hidden + max(3 * shape.intermediate, 3 * q + 3 * kv) + adapter_out)


def adapter_width(shape, p) -> int:
    """Output features of the widest projection LoRA adapts (0 when none is)."""
    return max((lin.out_features for lin in shape.layer_linears if lin.name in p.target_modules), default=0)


def reference_bytes(shape, p, dtype_bytes: int, tokens: int, scored: int, adapter: bool = False) -> int:
    """Peak of one no_grad forward of `tokens` tokens (the reference's; p: the PlanInput; adapter: whether a LoRA
    adapter is active in it, as in GRPO's no_grad forwards, not in DPO's reference). Nothing is kept from layer to
    layer but the hidden states, so it is the larger of one decoder layer's working set (layer_working_bytes) and
    the LM head's: the last hidden states, the scored rows' copy and the tile."""
    a, h = dtype_bytes, shape.hidden
    head = (tokens + scored) * h * a + fused_head_bytes(shape, p.backend, p.device, a, scored, grad=False)
    layer = layer_working_bytes(shape, a, tokens, adapter_width(shape, p) if adapter else 0)
    return max(layer, head)


def describe(method: str, precompute_ref: bool = False) -> str:
    """What the planner counted for the method, in a line of `plan`'s output."""
    r = runs(method, precompute_ref)
    if method == "sft":
        return "sft: 1 sequence per row"
    kept = ("2 sequences per row (chosen and rejected, each prompt + answer) keep activations"
            if r.grad_sequences == 2 else "1 sequence per row keeps activations")
    if method == "kto":
        kept += " (its KL sequence runs without gradients)"
    if RUNS[method].reference_batch and not r.reference_batch:
        ref = "reference log-probs precomputed: no reference forward"
    elif r.reference_batch:
        ref = ("the reference forward (adapter disabled, no_grad) adds one layer's working set and its LM head tile, "
               "no activations")
    else:
        ref = "no reference model"
    head = ("answers scored in tiles (TRL's fused LM head), every token counted as an answer's (an upper bound)"
            if method in ("dpo", "kto") else "the full logits of both")
    return f"{method}: {kept}; {ref}; {head}"
