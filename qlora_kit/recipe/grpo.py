"""The options of `train.method: grpo` (reinforcement fine-tuning with verifiable rewards), declared once.

The names are TRL 1.15 GRPOConfig's where one exists (num_generations, max_completion_length, temperature, beta,
loss_type, scale_rewards, num_iterations, steps_per_generation, epsilon, reward_weights), so TRL's documentation
reads over; `graders` are OpenAI reinforcement fine-tuning grader specs (qlora_kit.graders), one reward each.
Set under any other method, a grpo option is an error, as preference options are under sft.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from qlora_kit.recipe.options import Section

# TRL 1.15's GRPO loss types that need no option we do not declare (luspo/vespo need sequence-level sampling).
GRPO_LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo")


class GrpoSection(Section):
    """Options of train.method grpo; an error under the other methods."""

    graders: list[dict[str, Any]] = Field(
        [], description="Rewards, each an OpenAI reinforcement fine-tuning grader spec: string_check, "
        "text_similarity, python, multi, and ours: tags, json_schema, function (module:function or a "
        "qlora_kit.rewards entry point). Templates read the completion ({{sample.output_text}}) and the row's "
        "fields ({{item.answer}}). Required with train.method grpo.")
    reward_weights: list[float] | None = Field(None, description="Weight of each grader in the reward (default: "
                                               "1 each).")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group whose rewards "
                                 "are compared). train.batch_size x train.grad_accum must be a multiple of it.")
    max_completion_length: int = Field(64, gt=0, description="Longest sampled completion in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling of the completions.")
    beta: float = Field(0.0, ge=0, description="KL penalty towards the reference (the base with the adapter "
                        "disabled); 0 (TRL's default): no reference forward at all.")
    loss_type: Literal[GRPO_LOSS_TYPES] = Field(  # type: ignore[valid-type]
        "dapo", description="TRL's GRPO loss: dapo (default: tokens of the whole batch weigh alike), grpo (each "
        "completion's mean), dr_grpo (a constant normalizer), bnpo, cispo, sapo.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the rewards' std within each group (group), over the batch "
        "(batch), or not (none: Dr. GRPO).")
    epsilon: float = Field(0.2, gt=0, description="Clipping range of the policy ratio.")
    num_iterations: int = Field(1, gt=0, description="Updates per generated batch (GRPO's mu); above 1 reuses "
                                "completions, which is when clipping acts.")
    steps_per_generation: int | None = Field(None, gt=0, description="Optimizer micro-steps served by one "
                                             "generation round (default: train.grad_accum).")
    mask_truncated_completions: bool = Field(False, description="Leave completions cut at max_completion_length "
                                             "out of the loss (DAPO).")
    log_completions_every: int | None = Field(None, gt=0, description="Every N steps, a `completions` event with "
                                              "a few sampled completions and their rewards (default: off).")
    log_completions_count: int = Field(2, gt=0, le=16, description="Completions per `completions` event.")

    @field_validator("graders")
    @classmethod
    def _specs_are_objects(cls, value: list) -> list:
        for i, spec in enumerate(value):
            if not isinstance(spec.get("type"), str):
                raise ValueError(f"grpo.graders[{i}] needs a 'type' (string_check, text_similarity, python, multi, "
                                 "tags, json_schema, function)")
        return value


def check_grpo(method: str, grpo: GrpoSection, batch: Any, grad_accum: Any) -> None:
    """grpo options only with train.method grpo; graders given; the batch a multiple of the group (ValueError)."""
    given = {name for name, f in type(grpo).model_fields.items() if getattr(grpo, name) != f.default}
    if method != "grpo":
        if given:
            raise ValueError(f"grpo.{sorted(given)[0]} applies to train.method grpo, but train.method is {method}; "
                             "set train.method: grpo, or remove the grpo section")
        return
    if not grpo.graders:
        raise ValueError("train.method grpo needs at least one grader in grpo.graders, e.g. {type: string_check, "
                         "input: '{{sample.output_text}}', reference: '{{item.answer}}', operation: eq}")
    if grpo.reward_weights is not None and len(grpo.reward_weights) != len(grpo.graders):
        raise ValueError(f"grpo.reward_weights has {len(grpo.reward_weights)} weights for {len(grpo.graders)} "
                         "graders; give one per grader")
    if isinstance(batch, int) and isinstance(grad_accum, int):
        per_generation = batch * (grpo.steps_per_generation or grad_accum)
        if per_generation % grpo.num_generations:
            raise ValueError(f"grpo.num_generations {grpo.num_generations} must divide the completions of one "
                             f"generation round, train.batch_size x (grpo.steps_per_generation or train.grad_accum) "
                             f"= {per_generation}; e.g. set train.batch_size: {grpo.num_generations}")
