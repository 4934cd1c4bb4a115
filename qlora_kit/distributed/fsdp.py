"""FSDP-QLoRA: the Trainer arguments that shard a 4-bit model with FSDP2 (`fully_shard`), and the adapter gathered
back from its shards.

What makes QLoRA shardable: FSDP2 shards each parameter of a wrapped layer along its first dimension. bitsandbytes
packs NF4 weights as uint8 by default; `bnb_4bit_quant_storage` set to the compute dtype (the hf backend does this
under strategy fsdp) stores the same packed bytes as that dtype, so the 4-bit weights shard and all-gather like the
layer's other parameters, and the quantization state stays on the module. Each decoder layer is one FSDP unit
(wrapped by class name, found on the model), so only one layer is unsharded at a time.

Checkpoints are sharded (every rank writes its shard; torch.distributed.checkpoint) and resume on the same world
size. The adapter is gathered to rank 0 once, at the end.
"""

from __future__ import annotations


def decoder_layer_classes(model) -> list[str]:
    """Class names of the model's decoder layers (transformers lists them in `_no_split_modules`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = list(getattr(base, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in base.modules()}
    found = [n for n in names if n in present]
    if not found:
        from qlora_kit.errors import UsageError

        raise UsageError(f"distributed.strategy fsdp: cannot tell the decoder layers of {type(base).__name__} "
                         "(transformers names none in _no_split_modules); use strategy: ddp for this model")
    return found


def trainer_args(model, gradient_checkpointing: bool) -> dict:
    """TrainingArguments fields for FSDP2 full sharding with decoder-layer auto-wrap and sharded checkpoints."""
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": decoder_layer_classes(model),
            "reshard_after_forward": True,
            "state_dict_type": "SHARDED_STATE_DICT",
            "cpu_ram_efficient_loading": False,
            "activation_checkpointing": gradient_checkpointing,
        },
    }


def full_adapter_state(trainer) -> dict:
    """The full (unsharded) trainable weights on rank 0, CPU tensors; every rank must call it (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in trainable}
