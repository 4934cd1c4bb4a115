"""Peak training memory of a QLoRA run, predicted from the model's shape and the recipe alone.

Every term is bytes and has a name, so `plan` prints a breakdown and `bench` compares each one to what a real run
held. Three kinds of term:

- Exact (the planner's test checks them against a loaded model on CPU): 4-bit weights with their quant states,
  16-bit/32-bit weights, LoRA parameters and optimizer states (gradients are the LoRA parameters' size).
- Modelled: saved activations, the logits/loss buffers and the backward working set, per token, from the tensors
  a Llama-style decoder layer saves for backward (listed in `_saved_per_token_layer`). Attention is assumed to be
  SDPA/flash (memory linear in sequence length, no seq x seq matrix).
- Runtime: what a CUDA process holds beyond tensors (context, allocator slack), used only for the fit verdict.

The training method (planner/methods.py) sets how many sequences per row keep activations (dpo, orpo, simpo: 2),
how the answers are scored (TRL's fused LM head for dpo, kto and grpo, the full logits for orpo and simpo), and adds
the reference's no_grad forward (dpo, kto), which peaks on top of the policy's saved activations. A grpo step runs
phases one after the other (sampling, the no_grad scoring forwards, training: planner/grpo.py); its peak is the
held terms plus the largest phase, and `Estimate.phases` keeps each phase's bytes.

4-bit storage (bitsandbytes NF4, blocksize 64, double quantization): 0.5 byte per weight packed, one uint8
absmax per 64 weights, one fp32 absmax per 256 of those, plus per-layer code tables: ~0.516 bytes/param.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qlora_kit.model.backends import FULLY_TRAINED
from qlora_kit.planner.grpo import beyond_training, grpo_phases, split_lengths
from qlora_kit.planner.methods import reference_bytes, runs
from qlora_kit.planner.scoring import head_bytes
from qlora_kit.planner.shape import ModelShape

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK = 64
NESTED_BLOCK = 256
# Per Linear4bit: NF4 code (16 fp32), nested code (256 fp32), nested offset (one fp32).
NF4_TABLES = 16 * 4 + 256 * 4 + 4
BNB_8BIT_MIN = 4096  # bitsandbytes keeps 32-bit Adam states for smaller tensors (min_8bit_size)
BNB_8BIT_BLOCK = 256
# A CUDA process holds its context and kernels (~0.4-0.6 GiB on recent GPUs) outside max_memory_allocated, and
# the caching allocator reserves more than it hands out; the fit verdict adds both.
CUDA_CONTEXT = 600 * 2**20
ALLOCATOR_SLACK = 0.08


@dataclass(frozen=True)
class PlanInput:
    backend: str  # unsloth | hf
    device: str  # cuda | cpu
    dtype: str  # compute dtype
    batch_size: int
    seq_len: int
    lora_r: int
    target_modules: tuple[str, ...]  # resolved short names
    lora_dropout: float
    optimizer: str
    gradient_checkpointing: bool
    load_in_4bit: bool = True
    strategy: str = "none"  # none | ddp | fsdp (per-GPU memory of one process of a distributed run)
    world_size: int = 1
    method: str = "sft"  # train.method: sft | dpo | orpo | kto | simpo | grpo
    precompute_ref: bool = False  # preference.precompute_ref_log_probs: no reference forward in a step
    scored_share: float = 1.0  # dpo, kto: share of tokens the LM head scores (the answers'); 1.0: an upper bound
    # grpo (seq_len is prompt + completion): grpo.max_completion_length; micro-steps one `generate` call samples
    # for (batch_size x steps_per_generation completions); whether TRL runs the old policy's and the reference's
    # no_grad forwards.
    completion_len: int = 0
    steps_per_generation: int = 1
    old_logprobs: bool = False
    kl_reference: bool = False


@dataclass
class Estimate:
    terms: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)  # grpo: each phase's bytes above the held terms

    @property
    def peak(self) -> int:
        return sum(self.terms.values())


def nf4_bytes(numel: int) -> int:
    blocks = math.ceil(numel / NF4_BLOCK)
    return (numel + 1) // 2 + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + NF4_TABLES


def resolve_targets(shape: ModelShape, targets) -> tuple[str, ...]:
    from qlora_kit.errors import UsageError

    names = [lin.name for lin in shape.layer_linears]
    if targets == "all-linear":
        return tuple(names)
    unknown = [t for t in targets if t not in names and t not in FULLY_TRAINED]
    if unknown:
        raise UsageError(f"lora.target_modules: {', '.join(unknown)} not in a {shape.model_type} layer; it has: "
                         f"{', '.join(names)} (or use 'all-linear')")
    return tuple(targets)


def weight_terms(shape: ModelShape, p: PlanInput) -> dict[str, int]:
    a = DTYPE_BYTES[p.dtype]
    # hf: peft's prepare_model_for_kbit_training upcasts every non-4-bit floating weight to fp32 (embeddings,
    # head, norms, biases). Unsloth keeps them in the compute dtype.
    dense = 4 if (p.backend == "hf" and p.load_in_4bit) else a
    linears = shape.layers * sum(nf4_bytes(lin.numel) if p.load_in_4bit else lin.numel * a
                                 for lin in shape.layer_linears)
    dense_params = shape.params - shape.linear_params  # embeddings, head, norms, biases
    return {"weights_4bit" if p.load_in_4bit else "weights_linear": linears, "weights_dense": dense_params * dense}


def trainable_tensors(shape: ModelShape, p: PlanInput) -> list[int]:
    """Element counts of every trainable tensor: two LoRA matrices per adapted Linear, plus full copies of
    embeddings/head when target_modules names them (trained in full, as peft's modules_to_save)."""
    sizes = []
    for lin in shape.layer_linears:
        if lin.name in p.target_modules:
            sizes += [p.lora_r * lin.in_features, p.lora_r * lin.out_features]
    sizes = sizes * shape.layers
    if "embed_tokens" in p.target_modules:
        sizes.append(shape.vocab_size * shape.hidden)
    if "lm_head" in p.target_modules:
        sizes.append(shape.vocab_size * shape.hidden)
    return sizes


def optimizer_bytes(optimizer: str, sizes: list[int]) -> int:
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        total = 0
        for n in sizes:
            if n < BNB_8BIT_MIN:
                total += 8 * n
            else:
                total += 2 * n + 2 * 4 * math.ceil(n / BNB_8BIT_BLOCK)
        return total + 2 * 256 * 4  # the two quantization maps, shared by all tensors
    if optimizer == "adamw_torch":
        return sum(8 * n + 4 for n in sizes)  # exp_avg + exp_avg_sq (fp32) + a step counter tensor each
    if optimizer == "adafactor":
        return sum(4 * n for n in sizes)  # upper bound: unfactored second moment for every tensor
    return 0  # sgd without momentum


def _saved_per_token_layer(shape: ModelShape, p: PlanInput) -> int:
    """Bytes one token leaves saved for backward in one decoder layer (no checkpointing).

    - 2 RMSNorms: each keeps its fp32 input (4h) and its normalized output (a*h, the projections' input).
    - Attention: q-sized and k/v-sized tensors: the rotated q and k and v that SDPA keeps; its output is o_proj's
      input. Counting one q-sized tensor fewer than "q, k, v and the output" is what the measured CPU peaks of two
      models (hidden 256 and 512, vocab 512 and 32000) agree with, to 1%.
    - MLP: gate output, activation output, up output, and their product (down_proj's input): 4 x intermediate.
    - LoRA: each adapted Linear keeps its A output (r values); with dropout, also the mask and dropped input.
    - Architecture extras: norms on the attention/MLP outputs keep their fp32 input (Gemma 2/3: 2 x 4h); per-head
      q/k norms keep theirs (Qwen3, Gemma 3: 4(q + kv)); a fused qkv projection's output stays alive as a whole
      because v is a view of it (Phi-3: q + kv more).
    """
    a, h, d = DTYPE_BYTES[p.dtype], shape.hidden, shape.head_dim
    q, kv = shape.heads * d, shape.kv_heads * d
    total = 2 * (4 * h + a * h) + a * (q + 2 * kv) + a * 4 * shape.intermediate
    total += shape.extra_norms * 4 * h
    if shape.qk_norm:
        total += 4 * (q + kv)
    if shape.fused_qkv:
        total += a * (q + kv)
    for lin in shape.layer_linears:
        if lin.name in p.target_modules:
            total += a * p.lora_r + ((a + 1) * lin.in_features if p.lora_dropout > 0 else 0)
    return total


def activation_terms(shape: ModelShape, p: PlanInput, grads: int) -> dict[str, int]:
    method = runs(p.method, p.precompute_ref)
    a, tokens = DTYPE_BYTES[p.dtype], p.batch_size * p.seq_len * method.grad_sequences
    layer = _saved_per_token_layer(shape, p) * tokens
    if not p.gradient_checkpointing:
        saved = shape.layers * layer
    elif p.backend == "unsloth" and p.device == "cuda":
        # Unsloth's checkpointing offloads each layer's input to CPU RAM: ~2 inputs on the GPU at a time, plus the
        # layer being recomputed.
        saved = 2 * tokens * shape.hidden * a + layer
    else:
        saved = shape.layers * tokens * shape.hidden * a + layer
    # grpo scores the completions' tokens (seq_len - prompt), whatever scored_share says.
    scored = p.batch_size * split_lengths(p)[1] if p.method == "grpo" else math.ceil(tokens * p.scored_share)
    logits = head_bytes(shape, p.method, p.backend, p.device, a, tokens, scored)
    # The peak comes either at the loss (all saved activations + logits buffers) or in backward, after the logits
    # are freed: saved activations + the layer being recomputed when checkpointing + the LoRA gradients (they do
    # not exist before backward: the Trainer sets them to None after each step) + the gradient of one layer's MLP
    # intermediate and of its hidden states + one dequantized weight. The backward term is what backward needs
    # beyond the logits. Conservative: it ignores that the layer in backward frees its saved tensors meanwhile.
    largest = max(lin.numel for lin in shape.layer_linears)
    backward = (grads + (layer if p.gradient_checkpointing else 0)
                + tokens * (shape.intermediate + 2 * shape.hidden) * a + largest * a)
    terms = {"activations": saved + tokens * (4 + a) * shape.hidden, "logits_and_loss": logits,
             "gradients_and_backward": max(0, backward - logits)}
    if method.reference_batch:
        # The reference forward runs after the policy's, before backward: on top of the saved activations, it
        # needs what neither the loss nor backward already needed.
        ref_tokens = p.batch_size * p.seq_len * method.reference_batch
        ref = reference_bytes(shape, p, a, ref_tokens, math.ceil(ref_tokens * p.scored_share))
        terms["reference_forward"] = max(0, ref - max(logits, backward))
    return terms


def estimate(shape: ModelShape, p: PlanInput) -> Estimate:
    """Peak memory of one process (one GPU): with ddp or fsdp, of each process of the distributed run."""
    sizes = trainable_tensors(shape, p)
    lora = 4 * sum(sizes)  # LoRA weights stay fp32 (peft keeps adapter weights of 4-bit layers in fp32)
    terms = weight_terms(shape, p)
    terms.update({"lora": lora, "optimizer": optimizer_bytes(p.optimizer, sizes)})
    if p.strategy == "fsdp" and p.world_size > 1:
        terms.update(fsdp_sharded_terms(shape, p, sizes))
    if p.method == "grpo" and p.kl_reference:  # TRL's frozen "ref" copy of the adapter (planner/grpo.py)
        terms["reference_adapter"] = lora
    training = activation_terms(shape, p, grads=terms["lora"])  # gradients: the LoRA weights' size and dtype
    terms.update(training)
    phases = {}
    if p.method == "grpo":
        phases = {"training": sum(training.values()), **grpo_phases(shape, p, DTYPE_BYTES[p.dtype])}
        terms.update(beyond_training(phases))
    if p.strategy == "ddp" and p.world_size > 1:
        # DDP all-reduces gradients through buckets that hold a second copy of them (gradient_as_bucket_view is
        # off, the Trainer's default). Every other term is a full copy per process: DDP shards nothing.
        terms["ddp_gradient_buckets"] = lora
    return Estimate(terms, phases)


def _shard(rows: int, row_bytes: int, world: int) -> int:
    """Bytes one rank holds of a tensor FSDP2 shards along its first dimension (chunks padded to equal size)."""
    return math.ceil(rows / world) * row_bytes


def fsdp_sharded_terms(shape: ModelShape, p: PlanInput, sizes: list[int]) -> dict[str, int]:
    """What one of `world_size` FSDP2 processes holds (every decoder layer and the root module fully sharded).

    - 4-bit weights: the packed NF4 bytes are stored in the compute dtype (bnb_4bit_quant_storage) as an
      (numel / 2 / itemsize) x 1 parameter, which shards; the quantization state (absmax, code tables) is module
      state, not a parameter, and stays whole on every rank.
    - Other weights (embeddings, head, norms), LoRA weights, their gradients and optimizer states: 1/world each.
    - Working set: one decoder layer all-gathered for its forward or backward, and the next one prefetched."""
    world, a = p.world_size, DTYPE_BYTES[p.dtype]
    dense = 4 if (p.backend == "hf" and p.load_in_4bit) else a
    four_bit = 0
    layer_full = 0
    for lin in shape.layer_linears:
        packed = (lin.numel + 1) // 2
        if p.load_in_4bit:
            four_bit += _shard(math.ceil(packed / a), a, world) + nf4_bytes(lin.numel) - packed
            layer_full += packed
        else:
            four_bit += _shard(lin.out_features, lin.in_features * a, world)
            layer_full += lin.numel * a
    four_bit *= shape.layers
    lora_full = 4 * sum(sizes) // max(shape.layers, 1)
    dense_params = shape.params - shape.linear_params
    return {
        "weights_4bit" if p.load_in_4bit else "weights_linear": four_bit,
        "weights_dense": math.ceil(dense_params / world) * dense,
        "lora": 4 * sum(math.ceil(n / world) for n in sizes),
        "optimizer": optimizer_bytes(p.optimizer, [math.ceil(n / world) for n in sizes]),
        "fsdp_unsharded_layers": 2 * (layer_full + lora_full),
    }


def runtime_bytes(peak: int, device: str) -> int:
    """What a process needs beyond its tensors' peak, for the fit verdict (CUDA only)."""
    return int(peak * ALLOCATOR_SLACK) + CUDA_CONTEXT if device == "cuda" else 0


def largest_fitting(shape: ModelShape, p: PlanInput, budget: int, vary: str, limit: int) -> int | None:
    """Largest seq_len (or batch_size) up to `limit` whose prediction plus runtime fits `budget`; None if none."""
    from dataclasses import replace

    def fits(n: int) -> bool:
        peak = estimate(shape, replace(p, **{vary: n})).peak
        return peak + runtime_bytes(peak, p.device) <= budget

    if not fits(1):
        return None
    lo, hi = 1, limit
    if fits(hi):
        return hi
    while hi - lo > 1:  # memory grows monotonically with tokens
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
