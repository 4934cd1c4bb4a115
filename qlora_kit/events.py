"""The event schema: the one description of what happens in a run.

`events.jsonl` in the run directory, the CLI's `--events FILE|-`, hook calls and `qk.Job.events()` all carry these
models (the JSON Schema is generated from them: `qk.events_schema()`, `qlora-kit events-schema`). Every event has
`v` (schema version), `run_id`, `seq` (1, 2, 3, ... without gaps per run, continuing across resume and across the
merge/export stages), `t` (unix time) and `event` (its kind). Later versions only add kinds and fields.

Version 2 added `run_id` and `seq` to version 1 (which had `v`, `t`, `event` and the kind's fields). Since then,
fields were only added (with defaults): `run_start` gained `world_size`, `strategy` and `global_batch_size`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 2
ERROR_KINDS = ("recipe", "data", "oom", "disk", "runtime")


class BaseEvent(BaseModel):
    # extra="forbid": a field we emit but never declared would be an undocumented contract.
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[2] = Field(SCHEMA_VERSION, description="Event schema version.")
    run_id: str | None = Field(description="The run's id (run.json); null for an error before any run exists.")
    seq: int = Field(ge=1, description="1, 2, 3, ... without gaps per run, continuing across resume.")
    t: float = Field(description="Unix time the event was emitted.")


class RunStart(BaseEvent):
    event: Literal["run_start"] = "run_start"
    run_dir: str
    backend: str
    device: str
    resumed_from: str | None = Field(None, description="Checkpoint directory a resumed run continues from.")
    world_size: int = Field(1, ge=1, description="Training processes (all machines); 1 without distributed.")
    strategy: Literal["none", "ddp", "fsdp"] = Field("none", description="How the processes share the work.")
    global_batch_size: int | None = Field(
        None, description="Rows per optimizer step over all processes: batch_size x grad_accum x world_size.")


class Stage(BaseEvent):
    event: Literal["stage"] = "stage"
    name: str = Field(description="load_model, prepare_data, train, eval_loss, save_adapter, merge, export, eval.")
    status: Literal["start", "end", "failed"]
    seconds: float | None = Field(None, description="Duration (on end).")
    exit_code: int | None = Field(None, description="On failure of a stage run as its own process.")
    error: str | None = None


class Data(BaseEvent):
    event: Literal["data"] = "data"
    format: str
    chat_template: str
    train_rows: int
    eval_rows: int
    truncated: int
    dropped: int
    train_tokens: int
    trained_tokens: int


# The preference methods' metrics (TRL's log keys -> ours), on step events and, for the held-out rows, eval events.
# Rewards are the implicit rewards beta * (log p_model - log p_reference) of the answers (SimPO, ORPO: length-
# normalised log-probabilities, no reference); accuracy is the share of pairs whose chosen reward is higher.
PREFERENCE_METRICS = {
    "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected", "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy", "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected",
    "kl": "kl", "log_odds_ratio": "log_odds_ratio", "nll_loss": "nll_loss",
}


class PreferenceMetrics(BaseModel):
    """A step's (or the held-out rows') preference numbers: runs with train.method dpo, orpo, kto or simpo. Each
    method logs the ones it has (null: not this method's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reward_chosen: float | None = Field(None, description="Mean implicit reward of the chosen (KTO: desirable) "
                                        "answers.")
    reward_rejected: float | None = Field(None, description="Mean implicit reward of the rejected (KTO: undesirable) "
                                          "answers.")
    reward_margin: float | None = Field(None, description="Mean of chosen minus rejected reward.")
    reward_accuracy: float | None = Field(None, description="Share of pairs whose chosen reward is the higher (0..1).")
    logp_chosen: float | None = Field(None, description="Mean log-probability of the chosen answers.")
    logp_rejected: float | None = Field(None, description="Mean log-probability of the rejected answers.")
    kl: float | None = Field(None, description="KTO: estimated KL divergence between the model and the reference.")
    log_odds_ratio: float | None = Field(None, description="ORPO: mean log odds ratio of chosen over rejected.")
    nll_loss: float | None = Field(None, description="ORPO: the supervised (negative log-likelihood) part of the loss.")


class GraderReward(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float | None = Field(None, description="Mean of the grader's scores over the step's completions.")
    std: float | None = Field(None, description="Their standard deviation.")


# GRPO's metrics (TRL's log keys -> ours); rewards/NAME/mean|std become graders[NAME].
GRPO_METRICS = {
    "reward": "reward", "reward_std": "reward_std", "frac_reward_zero_std": "frac_reward_zero_std",
    "completions/mean_length": "completion_length_mean", "completions/min_length": "completion_length_min",
    "completions/max_length": "completion_length_max", "completions/clipped_ratio": "completion_clipped_ratio",
    "kl": "kl", "entropy": "entropy",
}


class GrpoMetrics(BaseModel):
    """A GRPO step's (or the held-out prompts') numbers: runs with train.method grpo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reward: float | None = Field(None, description="Mean total reward (the graders' weighted sum).")
    reward_std: float | None = Field(None, description="Standard deviation of the total reward.")
    graders: dict[str, GraderReward] = Field({}, description="Mean and std of each grader's score, by name.")
    frac_reward_zero_std: float | None = Field(None, description="Share of prompts whose completions all scored "
                                               "alike (no learning signal from them).")
    completion_length_mean: float | None = Field(None, description="Mean completion length in tokens.")
    completion_length_min: float | None = None
    completion_length_max: float | None = None
    completion_clipped_ratio: float | None = Field(None, description="Share of completions cut at "
                                                   "grpo.max_completion_length.")
    kl: float | None = Field(None, description="Mean KL divergence from the reference (grpo.beta > 0 only).")
    entropy: float | None = Field(None, description="Mean entropy of the sampled tokens' distributions.")


class CompletionSample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(description="The prompt's last message.")
    completion: str
    rewards: dict[str, float] = Field(description="Each grader's score of this completion.")


class Completions(BaseEvent):
    """A few completions of a GRPO step and their rewards (grpo.log_completions_every; off by default)."""

    event: Literal["completions"] = "completions"
    step: int
    samples: list[CompletionSample]


class Step(BaseEvent):
    event: Literal["step"] = "step"
    step: int
    max_steps: int
    loss: float
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = Field(None, description="Non-padding tokens per second since the previous step event.")
    epoch: float | None = None
    memory_bytes: int | None = Field(None, description="CUDA: max allocated so far; CPU: peak RSS so far.")
    eta_s: float | None = Field(None, description="Estimated seconds to the last step.")
    preference: PreferenceMetrics | None = Field(None, description="The preference method's metrics (null for sft).")
    grpo: GrpoMetrics | None = Field(None, description="GRPO's rewards, completion lengths and KL (null for the "
                                     "other methods).")


class Eval(BaseEvent):
    event: Literal["eval"] = "eval"
    step: int
    eval_loss: float
    preference: PreferenceMetrics | None = Field(None, description="The preference method's metrics on the "
                                                 "held-out rows (null for sft).")
    grpo: GrpoMetrics | None = Field(None, description="GRPO's rewards on completions of the held-out prompts.")


class Checkpoint(BaseEvent):
    event: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str = Field(description="Relative to the run directory.")


class Artifact(BaseEvent):
    event: Literal["artifact"] = "artifact"
    kind: str = Field(description="adapter, metrics, merged_shard, merge_report, gguf, modelfile, export_report.")
    path: str = Field(description="Absolute path of the file.")
    bytes: int
    sha256: str


class Warning(BaseEvent):  # noqa: A001  (the event's kind is its name)
    event: Literal["warning"] = "warning"
    message: str
    source: str | None = Field(None, description="What warned: a hook, a plugin, the model loader, ...")


class Error(BaseEvent):
    event: Literal["error"] = "error"
    kind: Literal["recipe", "data", "oom", "disk", "runtime"]
    message: str
    exit_code: int


class Cancelled(BaseEvent):
    event: Literal["cancelled"] = "cancelled"
    step: int
    reason: str = Field(description="SIGINT, SIGTERM, STOP file, cancel token or job.cancel().")
    checkpoint: str | None = Field(None, description="Checkpoint saved on the way out (relative to the run dir).")


class RunEnd(BaseEvent):
    event: Literal["run_end"] = "run_end"
    status: Literal["complete", "interrupted", "failed"]
    error: str | None = None


EVENT_TYPES: tuple[type[BaseEvent], ...] = (RunStart, Stage, Data, Step, Eval, Checkpoint, Artifact, Warning, Error,
                                            Cancelled, RunEnd, Completions)
KINDS = {cls.model_fields["event"].default: cls for cls in EVENT_TYPES}
Event = Annotated[Union[RunStart, Stage, Data, Step, Eval, Checkpoint, Artifact, Warning, Error, Cancelled, RunEnd,
                        Completions], Field(discriminator="event")]
_ADAPTER: TypeAdapter = TypeAdapter(Event)


def make_event(kind: str, /, **fields: Any) -> BaseEvent:
    """Build and validate one event; a field or kind outside the schema is a programming error (raises)."""
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(KINDS)}") from None
    return cls(**fields)


def parse_event(data: str | bytes | dict) -> BaseEvent:
    """One event from a JSON line or a dict (what a host reads from events.jsonl or `--events`)."""
    if isinstance(data, (str, bytes)):
        data = json.loads(data)
    return _ADAPTER.validate_python(data)


def events_schema() -> dict:
    """JSON Schema (draft 2020-12) of one event, generated from the models above."""
    schema = _ADAPTER.json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "qlora-kit/events/v2",
            "title": "qlora-kit event", **schema}
