"""GRPO bench cells: prompts to sample from, a default grader, the generation's own clock, and the cell's figures.

- Rows (synthetic): seeded arithmetic questions ("What is 37 + 58?", `item.answer` "95") followed by seeded random
  digits, so that each prompt, rendered by the run's chat template with the generation prompt, is exactly seq_len -
  grpo.max_completion_length tokens (the planner's prompt length). `--data recipe`: the recipe's own prompts,
  encoded as `train` encodes them (those leaving no room for a completion dropped) and cycled.
- Completions always run to grpo.max_completion_length (end-of-sequence is suppressed, as `min_new_tokens`), so a
  step trains batch_size sequences of exactly seq_len tokens, as rows of the other methods are exactly seq_len.
- Grader: the recipe's when it is a grpo recipe; otherwise a string_check of the answer (DEFAULT_GRADER), and the
  group is the whole micro-batch (grpo.num_generations = the cell's batch size).
- Figures: tokens/s are the tokens a step trained (prompt + completion of every sequence) over the step's seconds,
  generation included; generated_tokens_per_second is the completion tokens sampled over the seconds spent in
  `generate` alone.
"""

from __future__ import annotations

import json
import random
import time

DEFAULT_GRADER = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}", "operation": "eq"}


def grpo_overrides(base, batch_size: int | None) -> list[str]:
    """The recipe as a grpo cell trains it. `base`: the recipe as given (before the cell's overrides)."""
    out = ["train.method=grpo", "data.packing=false", "preference={}"]
    if base is None or base.train.method != "grpo":
        out.append("grpo.graders=" + json.dumps([DEFAULT_GRADER]))
        if batch_size:
            out.append(f"grpo.num_generations={batch_size}")
    return out


def check_grpo_cells(sweep, recipe) -> None:
    """Before any cell runs: every seq_len leaves room for a prompt, and the recipe is valid as each grpo cell
    trains it (the group divides the batch). `recipe`: the recipe as given."""
    from qlora_kit.errors import RecipeError, UsageError
    from qlora_kit.recipe import load_recipe

    completion = recipe.grpo.max_completion_length
    short = [n for n in sweep.seq_lens if n <= completion]
    if short:
        raise UsageError(f"--seq-lens: {short[0]} leaves no room for a prompt beside grpo.max_completion_length "
                         f"{completion} (a grpo cell's seq_len is prompt + completion); use longer --seq-lens")
    for batch in sweep.batch_sizes:
        if batch < 2 and recipe.train.method != "grpo":
            raise UsageError(f"--batch-sizes: a grpo cell samples a group of at least 2 completions a prompt; "
                             f"{batch} is too few")
        try:
            load_recipe(sweep.recipe, [*sweep.overrides, f"train.batch_size={batch}", "train.grad_accum=1",
                                       *grpo_overrides(recipe, batch)])
        except RecipeError as exc:
            raise UsageError(f"--methods grpo with --batch-sizes {batch}: {exc.problems[0]}") from None


def prompt_rows(spec: dict, recipe, tokenizer):
    """The PromptSplit a grpo cell samples from: batch_size x steps prompts (see the module's docstring)."""
    from qlora_kit.data.encode import apply_chat_template_choice
    from qlora_kit.data.prompts import PromptRow, PromptSplit

    apply_chat_template_choice(tokenizer, recipe.data.chat_template)
    n = spec["batch_size"] * spec["steps"]
    target = spec["seq_len"] - recipe.grpo.max_completion_length
    if spec["data"] != "synthetic":
        return _recipe_prompts(recipe, tokenizer, n)
    rng = random.Random(recipe.train.seed)
    rows = []
    for index in range(n):
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        messages, length = _fill(tokenizer, f"What is {a} + {b}? Ignore these digits: ", rng, target)
        rows.append(PromptRow(messages, {"answer": str(a + b)}, f"synthetic:{index + 1}", length))
    return PromptSplit(rows)


def _length(tokenizer, messages: list[dict]) -> int:
    from qlora_kit.data.encode import render

    return len(tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"])


def _fill(tokenizer, question: str, rng: random.Random, target: int) -> tuple[list[dict], int]:
    """A user message of `question` and random digits, rendered to `target` tokens (the closest under it when the
    tokenizer's digit grouping does not allow exactly that)."""
    from qlora_kit.errors import UsageError

    digits, best = 0, None
    pool = "".join(str(rng.randrange(10)) for _ in range(4 * target))
    for _ in range(8):
        messages = [{"role": "user", "content": question + pool[:digits]}]
        length = _length(tokenizer, messages)
        if length <= target and (best is None or length > best[1]):
            best = (messages, length)
        if length == target:
            break
        digits = max(0, digits + target - length)
    if best is None:
        raise UsageError(f"--seq-lens: a grpo prompt needs more than the {target} tokens that seq_len leaves beside "
                         "grpo.max_completion_length; use a longer --seq-lens")
    return best


def _recipe_prompts(recipe, tokenizer, n: int):
    from qlora_kit.data.prepare import load_examples
    from qlora_kit.data.prompts import PromptSplit, encode_prompts
    from qlora_kit.errors import DataError

    items, _, _ = load_examples(recipe.data, recipe.train.seed, method="grpo")
    split = encode_prompts(tokenizer, items, recipe.model.max_seq_length, recipe.grpo.max_completion_length)
    if not split.rows:
        raise DataError("bench --data recipe: no prompt of the recipe's data leaves room for "
                        "grpo.max_completion_length within --seq-lens")
    return PromptSplit([split.rows[i % len(split.rows)] for i in range(n)])


class GenerationClock:
    """Wraps the policy's `generate` (what TRL calls to sample): per call, the step it ran in (0-based), seconds,
    sequences, prompt tokens (padded) and completion tokens."""

    def __init__(self, trainer):
        self.calls: list[dict] = []
        model = trainer.model
        inner = model.generate

        def generate(*args, **kwargs):
            started = time.perf_counter()
            out = inner(*args, **kwargs)
            prompt = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
            self.calls.append({"step": trainer.state.global_step, "seconds": time.perf_counter() - started,
                               "sequences": out.shape[0], "prompt_tokens": prompt,
                               "completion_tokens": out.shape[1] - prompt})
            return out

        model.generate = generate


def full_completions(trainer, length: int) -> None:
    """Every completion runs to `length` tokens: end-of-sequence suppressed until then (min_new_tokens)."""
    trainer.generation_config.min_new_tokens = length


def grpo_figures(spec: dict, measured: list[float], clock: GenerationClock, profile_last: bool) -> dict:
    """The cell's GRPO figures (see the module's docstring); `measured`: the timed steps' seconds."""
    calls = clock.calls
    if not calls:
        raise RuntimeError("bench: the GRPO trainer never called the policy's generate")
    prompt, completion = calls[-1]["prompt_tokens"], calls[-1]["completion_tokens"]
    profiled = spec["steps"] - 1 if profile_last else None  # slowed by the profiler
    timed = [c for c in calls if c["step"] >= spec["warmup"] and c["step"] != profiled] or \
        [c for c in calls if c["step"] != profiled] or calls  # a round can serve several steps
    tokens_per_step = spec["batch_size"] * (prompt + completion)
    gen_seconds = sum(c["seconds"] for c in timed)
    return {
        "tokens_per_second": round(tokens_per_step * len(measured) / sum(measured), 2) if measured else None,
        "tokens_per_second_counts": "tokens trained per step (prompt + completion of each sequence) over the "
                                    "step's seconds, generation included",
        "generated_tokens_per_second": round(sum(c["sequences"] * c["completion_tokens"] for c in timed)
                                             / gen_seconds, 2) if gen_seconds else None,
        "generation_seconds": [round(c["seconds"], 5) for c in calls],
        "generation_steps": [c["step"] for c in calls],
        "prompt_tokens": prompt, "completion_tokens": completion,
        "trained_token_fraction": round(completion / (prompt + completion), 4),
        "rows_per_second": round(spec["batch_size"] * len(measured) / sum(measured), 3) if measured else None,
    }
