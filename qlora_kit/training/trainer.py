"""Build the method's TRL trainer from the resolved recipe: SFTTrainer for sft, the preference trainers for the
others (training/preference.py). Data arrives already tokenized and masked (data.encode, data.preference), so TRL's
own dataset preparation is skipped: what `data check` previews is exactly what trains."""

from __future__ import annotations

from qlora_kit.runtime.compat import (plain_loss_sft_trainer, remove_printer_callback, restore_trainable_dtypes,
                              trainable_dtypes)
from qlora_kit.data.encode import Encoded
from qlora_kit.recipe.schema import Recipe
from qlora_kit.training.auto import Runtime


def to_dataset(rows: list[Encoded]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})


def trainer_args(recipe: Recipe, rt: Runtime, output_dir: str, has_eval: bool, save: bool = True, model=None) -> dict:
    """The arguments every method's config shares (transformers' TrainingArguments, from the train section)."""
    t = recipe.train
    parallel = {}
    if rt.strategy == "ddp":
        # Every trainable (LoRA) weight takes part in each step: skipping the unused-parameter search saves a
        # graph walk per step.
        parallel = {"ddp_find_unused_parameters": False}
    elif rt.strategy == "fsdp":
        from qlora_kit.distributed.fsdp import trainer_args

        parallel = trainer_args(model, rt.gradient_checkpointing)
    eval_every = has_eval and t.eval_steps is not None
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        learning_rate=t.lr, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio
        optim=t.optimizer, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="steps" if save else "no", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        eval_strategy="steps" if eval_every else "no", eval_steps=t.eval_steps if eval_every else None,
        seed=t.seed, data_seed=t.seed,
        bf16=rt.device == "cuda" and rt.dtype == "bfloat16", fp16=rt.device == "cuda" and rt.dtype == "float16",
        use_cpu=rt.device == "cpu",
        # Unsloth applies its own checkpointing in get_peft_model; for hf, prepare_model_for_kbit_training did.
        gradient_checkpointing=False,
        report_to=list(t.report_to) or "none", disable_tqdm=True, dataloader_num_workers=0,
        # Counted by the Trainer for every backend alike (TRL's own count lives in its loss, which the CPU hf
        # path replaces), so tokens/s compare fairly; padding excluded.
        include_num_input_tokens_seen="non_padding",
        **parallel,
    )


def sft_config(recipe: Recipe, rt: Runtime, output_dir: str, has_eval: bool, save: bool = True, model=None):
    from trl import SFTConfig

    return SFTConfig(**trainer_args(recipe, rt, output_dir, has_eval, save, model),
                     max_length=recipe.model.max_seq_length, packing=False,
                     dataset_kwargs={"skip_prepare_dataset": True})


# Package each `train.report_to` logger needs (transformers' integration imports it), and the pip extra with it.
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_loggers(names) -> None:
    """Before any model loads: a named logger whose package is missing is a one-line error naming the extra."""
    import importlib.util

    from qlora_kit.errors import UsageError

    for name in names:
        if importlib.util.find_spec(LOGGER_PACKAGES[name]) is None:
            raise UsageError(f"train.report_to: {name} needs the {LOGGER_PACKAGES[name]} package, which is not "
                             f"installed; pip install 'qlora-kit[{name}]' or remove it from train.report_to")


def build_trainer(recipe: Recipe, rt: Runtime, model, tokenizer, train_rows, eval_rows, output_dir, callbacks,
                  save: bool = True):
    """save=False: no checkpoints at all (benchmark cells; the Trainer would otherwise save at max_steps).
    The rows are the method's: lists of encoded rows, or for grpo the PromptSplits (data/prompts.py)."""
    method = recipe.train.method
    if method == "grpo":
        from qlora_kit.training.grpo import build_grpo_trainer

        adapter_dtypes = trainable_dtypes(model)
        trainer = build_grpo_trainer(recipe, rt, model, tokenizer, train_rows, eval_rows,
                                     trainer_args(recipe, rt, output_dir, bool(eval_rows.rows), save, model), callbacks)
        _settle(trainer, recipe, model, adapter_dtypes)
        return trainer
    if method != "sft":
        return _preference_trainer(recipe, rt, model, tokenizer, train_rows, eval_rows, output_dir, callbacks, save)
    from trl import SFTTrainer

    cls = SFTTrainer
    if recipe.model.backend == "hf" and rt.device == "cpu":
        cls = plain_loss_sft_trainer()
    if rt.strategy != "none":
        from qlora_kit.distributed.lastbatch import train_each_row_once

        cls = train_each_row_once(cls)  # an epoch's last, partial batch trains its rows once, as on one process
    adapter_dtypes = trainable_dtypes(model)
    trainer = cls(
        model=model, processing_class=tokenizer, args=sft_config(recipe, rt, output_dir, bool(eval_rows), save, model),
        train_dataset=to_dataset(train_rows), eval_dataset=to_dataset(eval_rows) if eval_rows else None,
        callbacks=callbacks,
    )
    _settle(trainer, recipe, model, adapter_dtypes)
    return trainer


def _settle(trainer, recipe: Recipe, model, adapter_dtypes: dict) -> None:
    remove_printer_callback(trainer)  # raw log dicts on stdout; our Progress callback reports instead
    restore_trainable_dtypes(model, adapter_dtypes)  # TRL casts LoRA weights of a quantized model to bf16
    if recipe.model.adapter:
        # That cast rounded the loaded adapter too: load it again, so training starts exactly from it (and, for
        # dpo/kto, exactly at TRL's frozen copy, the reference: the first loss is then ln 2).
        from qlora_kit.model.start_adapter import load_adapter_weights

        load_adapter_weights(model, recipe.model.adapter)



def _preference_trainer(recipe: Recipe, rt: Runtime, model, tokenizer, train_rows, eval_rows, output_dir, callbacks,
                        save: bool):
    from qlora_kit.runtime.compat import cpu_fused_lm_head
    from qlora_kit.training import preference as pref

    method = recipe.train.method
    if rt.device == "cpu":
        cpu_fused_lm_head()
    cls = pref.trainer_class(method)
    if rt.strategy != "none":
        from qlora_kit.distributed.lastbatch import train_each_row_once

        cls = train_each_row_once(cls)
    adapter_dtypes = trainable_dtypes(model)
    config = pref.preference_config(recipe, trainer_args(recipe, rt, output_dir, bool(eval_rows), save, model))
    trainer = cls(
        model=model, processing_class=tokenizer, args=config, train_dataset=pref.to_preference_dataset(train_rows, method),
        eval_dataset=pref.to_preference_dataset(eval_rows, method) if eval_rows else None, callbacks=callbacks,
    )
    pref.settle_reference(trainer, from_adapter=recipe.model.adapter is not None)
    _settle(trainer, recipe, model, adapter_dtypes)
    return trainer
