"""train.method grpo on TRL 1.15's GRPOTrainer: completions sampled from the model being trained, rewarded by the
recipe's graders (qlora_kit.graders), the policy moved towards the better ones of each group.

- Generation: the trained model's own `generate` (transformers; on CPU and on a GPU alike: TRL's vLLM path is not
  used, and Unsloth's fast generation needs vLLM too). TRL renders each conversational prompt with the run's chat
  template (set on the tokenizer by data.encode) and the generation prompt, as `eval` does.
- Rewards: one TRL reward function per grader, so TRL logs each one's mean and std (`rewards/NAME/mean`); the
  graders read the row's fields from its `item_json` column. A grader that raises, hangs or returns a non-number
  stops training with its one line (GraderError), not a NaN later on.
- Log-probs: TRL scores completions through its fused LM head (`add_fused_lm_head`), tile by tile without the
  (batch x length x vocabulary) logits; on a CPU its Triton kernel is missing and runtime.logprobs gives it a torch
  one (the same path the preference trainers use; Unsloth installs its own chunked one on import).
- Reference (beta > 0): TRL copies the adapter into a frozen one named "ref" and scores with it (no second model;
  the planner counts the copy). For a fresh adapter that copy starts as the base: B is zero.
"""

from __future__ import annotations

from qlora_kit.recipe.schema import Recipe


def grpo_args(recipe: Recipe) -> dict:
    """GRPOConfig's method arguments, from the grpo section."""
    g = recipe.grpo
    return dict(num_generations=g.num_generations, max_completion_length=g.max_completion_length,
                temperature=g.temperature, top_p=g.top_p, beta=g.beta, loss_type=g.loss_type,
                scale_rewards=g.scale_rewards, epsilon=g.epsilon, num_iterations=g.num_iterations,
                steps_per_generation=g.steps_per_generation, mask_truncated_completions=g.mask_truncated_completions,
                reward_weights=g.reward_weights, log_completions=False, num_generations_eval=g.num_generations,
                # The Trainer would drop item_json/row_where (not model inputs); the graders read them.
                remove_unused_columns=False)


def build_grpo_trainer(recipe: Recipe, rt, model, tokenizer, train_split, eval_split, common: dict, callbacks):
    from pathlib import Path

    from trl import GRPOConfig, GRPOTrainer

    from qlora_kit.data.prompts import to_prompt_dataset
    from qlora_kit.graders import load_graders
    from qlora_kit.runtime.compat import cpu_fused_lm_head

    if rt.device == "cpu":
        cpu_fused_lm_head()
    graders = load_graders(recipe.grpo.graders, Path.cwd())
    config = GRPOConfig(**common, **grpo_args(recipe))
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=config, reward_funcs=graders.reward_functions(),
                          train_dataset=to_prompt_dataset(train_split),
                          eval_dataset=to_prompt_dataset(eval_split) if eval_split.rows else None, callbacks=callbacks)
    trainer.qk_graders = graders  # closed by `fit` when training ends (python graders run in worker processes)
    return trainer


def sampled_completions(trainer, count: int) -> list[dict]:
    """The first `count` completions of the latest generation round with their rewards (TRL keeps the round in
    `_logs`, whether or not it prints them)."""
    logs = getattr(trainer, "_logs", None)
    if not logs:
        return []
    out = []
    for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"])):
        if i >= count:
            break
        out.append({"prompt": _text(prompt), "completion": _text(completion),
                    "rewards": {name: float(v[i]) for name, v in logs["rewards"].items() if i < len(v)}})
    return out


def _text(value) -> str:
    """A conversational prompt or completion as text: its last message's content."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return str(value)
