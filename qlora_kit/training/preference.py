"""The preference methods (train.method dpo, orpo, kto, simpo) on TRL 1.15's trainers, fed our encoded rows.

- dpo: `trl.DPOTrainer`; kto: `trl.KTOTrainer`; orpo: `trl.experimental.orpo.ORPOTrainer`; simpo:
  `trl.experimental.cpo.CPOTrainer` with loss_type simpo and cpo_alpha 0 (SimPO is CPO's reference-free loss).
- Rows arrive tokenized (data/preference.py): each trainer's own dataset preparation is skipped, so what `data
  check` previews is what trains, exactly as for SFT.
- The reference (dpo, kto) is the 4-bit base with the adapter disabled: no second model object. TRL adds a frozen
  copy of the adapter ("ref") whenever it is handed a PEFT model; for a fresh adapter that copy is removed again
  (disabling the adapter gives the same model without the extra LoRA matmuls); for a run that starts from a trained
  adapter (model.adapter, "SFT then DPO") it is kept, so the reference is that SFT model, not the raw base.
- On a CPU, TRL's fused LM head has no kernel: runtime.compat.cpu_fused_lm_head gives it a plain-torch one.
"""

from __future__ import annotations

from qlora_kit.data.preference import EncodedPreference
from qlora_kit.recipe.methods import DEFAULT_BETA, LOSS_TYPES
from qlora_kit.recipe.schema import Recipe

REF_ADAPTER = "ref"  # the name TRL gives its frozen copy of the adapter


def method_args(recipe: Recipe) -> dict:
    """The method's own config arguments, from the preference section (defaults per method filled in)."""
    method, p = recipe.train.method, recipe.preference
    args = {"beta": p.beta if p.beta is not None else DEFAULT_BETA[method], "max_length": recipe.model.max_seq_length}
    if method in ("dpo", "kto"):
        args.update(loss_type=p.loss_type or LOSS_TYPES[method][0], precompute_ref_log_probs=p.precompute_ref_log_probs)
    if method == "dpo":
        args.update(label_smoothing=p.label_smoothing)
    if method == "kto":
        args.update(desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight)
    if method == "simpo":
        args.update(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=p.simpo_gamma, label_smoothing=p.label_smoothing)
    if method in ("orpo", "simpo"):
        args.update(max_completion_length=p.max_completion_length)
    return args


def _classes(method: str):
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOConfig, CPOTrainer


def preference_config(recipe: Recipe, common: dict):
    config_cls, _ = _classes(recipe.train.method)
    extra = {"train_sampling_strategy": "sequential"} if recipe.train.method == "kto" else {}
    return config_cls(**common, **method_args(recipe), **extra)


def trainer_class(method: str):
    """The method's TRL trainer, taking our tokenized rows as they are."""
    _, base = _classes(method)

    if method in ("dpo", "kto"):
        class Tokenized(base):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                if method == "kto" and self.calculate_KL:
                    # KTO's KL term pairs each prompt with another row's completion: the rotation TRL applies to
                    # its own tokenized rows (kto_trainer._prepare_dataset), within each training batch.
                    def rotate(batch):
                        batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                        return batch

                    dataset = dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)
                return dataset
    else:
        class Tokenized(base):
            def tokenize_row(self, feature, model=None):
                return feature

            def _track_num_input_tokens(self, inputs):
                # transformers counts `input_ids`, which these batches lack (chosen_/rejected_ columns): count both
                # sequences' real tokens, as DPO's batches count them, so tokens/s compares across methods.
                import torch

                seen = sum(inputs[f"{side}_attention_mask"].sum() for side in ("chosen", "rejected"))
                seen = torch.as_tensor(seen, device=self.args.device, dtype=torch.int64)
                self.state.num_input_tokens_seen += self.accelerator.gather(seen).sum().item()

    Tokenized.__name__ = f"Tokenized{base.__name__}"
    return Tokenized


def to_preference_dataset(rows: list[EncodedPreference], method: str):
    from datasets import Dataset

    if method == "kto":
        return Dataset.from_dict({"prompt_ids": [r.prompt_ids for r in rows],
                                  "completion_ids": [r.chosen_ids for r in rows],
                                  "label": [bool(r.label) for r in rows]})
    if method == "dpo":
        return Dataset.from_dict({"prompt_ids": [r.prompt_ids for r in rows], "chosen_ids": [r.chosen_ids for r in rows],
                                  "rejected_ids": [r.rejected_ids for r in rows]})
    return Dataset.from_list([_legacy_columns(r) for r in rows])


def _legacy_columns(row: EncodedPreference) -> dict:
    """The columns ORPO's and CPO's collator reads (their tokenize_row's output for a decoder-only model)."""
    out = {"prompt_input_ids": row.prompt_ids, "prompt_attention_mask": [1] * len(row.prompt_ids)}
    for side, answer in (("chosen", row.chosen_ids), ("rejected", row.rejected_ids)):
        ids = row.prompt_ids + answer
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = [1] * len(ids)
        out[f"{side}_labels"] = [-100] * len(row.prompt_ids) + answer
    return out


def settle_reference(trainer, from_adapter: bool) -> None:
    """Fresh adapter: drop TRL's copy, so the reference is the base with the adapter disabled (module docstring)."""
    model = trainer.model
    if not from_adapter and REF_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REF_ADAPTER)
        model.set_adapter("default")
