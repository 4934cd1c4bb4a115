"""One typed options model per stage, declared once.

Each model is at the same time the recipe's section for that stage (recipe/schema.py adds only `enabled`), the
keyword arguments of the API call (`qk.merge(run_dir, samples=4)` or `qk.merge(run_dir, MergeOptions(...))`) and
the command's flags (cli/options.py generates them from the fields: name, type, default and help from the
description). A new option is one field here; tests/test_stage_options.py checks that the three agree.

Flag spelling is derived, never written: `max_shard_size` is `--max-shard-size`; a bool that defaults to True is
turned off with `--no-NAME` (`verify` -> `--no-verify`), one that defaults to False is turned on with `--NAME`; a
list is one comma-separated flag value (`--quant q4_k_m,q8_0`), which the models also accept from Python.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from qlora_kit.recipe.registry import registry_choice

BackendName = registry_choice("qlora_kit.model.backends:BACKENDS")
QuantName = registry_choice("qlora_kit.gguf.tensors.quants:QUANT_TYPES", fold_case=True)  # Q4_K_M as llama.cpp writes it
Positive = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    # extra="forbid": a typo in a recipe must be an error with a did-you-mean, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageOptions(Section):
    """A stage's options. Comma-separated strings are accepted for list fields (the CLI's spelling)."""

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for name, info in cls.model_fields.items():
                if isinstance(data.get(name), str) and _is_list(info.annotation):
                    data[name] = [part.strip() for part in data[name].split(",") if part.strip()]
        return data


class ValueForAnotherOption(ValueError):
    """A value that belongs to another option (`--device t4`: a GPU, which is `--gpu t4`); make_options words it
    in the caller's spelling (the server shows the API's)."""

    def __init__(self, allowed: str, purpose: str, other: str, value: Any):
        self.allowed, self.purpose, self.other, self.value = allowed, purpose, other, value
        super().__init__(f"{allowed}; {purpose} use {other}={value!r}")

    def worded(self, name: str, caller: str | None) -> str:
        v = self.value
        return f"{caller}: {name}={v!r}: {self}" if caller else \
            f"{flag(name)} {v}: {self.allowed}; {self.purpose} use {flag(self.other)} {v}"


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list or any(get_origin(a) is list for a in get_args(annotation))


def _size(value: str | None) -> str | None:
    from qlora_kit.recipe.sizes import parse_size

    if value is not None:
        parse_size(value)
    return value


class MergeOptions(StageOptions):
    """`qlora-kit merge RUN_DIR`, `qk.merge(run_dir)` and the recipe's `merge:` section."""

    base: Literal["dequantized", "original"] = Field(
        "dequantized", description="dequantized: the NF4 weights the adapter was trained against (reproduces the "
        "trained model); original: the 16-bit weights the run started from.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Output dtype; auto: the base "
                                                           "checkpoint's.")
    max_shard_size: str = Field("2GB", description="Largest safetensors shard, e.g. 500MB, 2GB.")
    verify: bool = Field(True, description="Check the merged model against the trained adapter (merge_report.json; "
                         "it loads both models).")
    compare: bool = Field(True, description="Also measure the other merge base in the report.")
    samples: int = Field(8, gt=0, description="Held-out rows used by the fidelity check.")
    allow_mismatch: bool = Field(False, description="Write the merge even if the fidelity check fails.")

    @field_validator("max_shard_size")
    @classmethod
    def _shard_size(cls, value: str) -> str:
        return _size(value)

    @property
    def max_shard_bytes(self) -> int:
        from qlora_kit.recipe.sizes import parse_size

        return parse_size(self.max_shard_size)


class ExportOptions(StageOptions):
    """`qlora-kit export SOURCE`, `qk.export(source)` and the recipe's `export:` section."""

    quant: list[QuantName] = Field(["q4_k_m", "q8_0"], min_length=1, description="GGUF types to write: f32, f16, "
                                   "bf16, q8_0, q4_0, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k.")
    verify: bool = Field(True, description="Check tokens and logits through llama.cpp (export_report.json).")
    samples: int = Field(4, gt=0, description="Held-out rows for the logit check.")
    allow_mismatch: bool = Field(False, description="Keep files that fail verification.")

    @field_validator("quant", mode="before")
    @classmethod
    def _no_imatrix_types(cls, value: Any) -> Any:
        """llama.cpp refuses some types without an importance matrix: say so, not just "unknown"."""
        from qlora_kit.gguf.tensors.quants import NEEDS_IMATRIX, QUANT_TYPES

        for name in value if isinstance(value, list) else []:
            if str(name).strip().lower() in NEEDS_IMATRIX:
                raise ValueError(f"{name!r} needs an importance matrix (imatrix), which qlora-kit does not compute; "
                                 f"choose one of: {QUANT_TYPES.choices()}")
        return value


class EvalOptions(StageOptions):
    """`qlora-kit eval RUN_DIR`, `qk.evaluate(run_dir)` and the recipe's `eval:` section."""

    systems: list[str] | None = Field(None, description="base, fewshot, adapter, reference, merged, gguf:TYPE, "
                                      "recorded:FILE (an old model's recorded answers, JSONL) (default: base, fewshot, "
                                      "adapter, and merged and every GGUF the run has; a preference run: base, "
                                      "reference when it started from model.adapter, adapter, merged, GGUFs).")
    samples: int | None = Field(None, gt=0, description="Evaluate at most this many held-out rows (default: all).")
    data: str | None = Field(None, description="Held-out rows from this file instead of the run's eval split "
                             "(default: the run's eval split).")
    max_new_tokens: int = Field(64, gt=0, description="Longest generated answer in tokens.")
    fewshot: int = Field(3, gt=0, description="Training examples in the few-shot prompt.")
    scorer: str | None = Field(None, description="Task score 'module:function(prediction, reference, row) -> float' "
                               "(default: none; the built-in metrics only).")
    gguf_drop: float = Field(0.05, ge=0, le=1, description="Warn when a GGUF scores more than this fraction of the "
                             "metric below the merged model.")
    match_margin: float = Field(0.05, ge=0, le=1, description="A tuned model matches a recorded one when the 95% "
                                "interval rules out losing more than this fraction of the metric.")
    seed: int = Field(0, description="Seed of the bootstrap intervals.")


class PlanOptions(StageOptions):
    """`qlora-kit plan RECIPE` and `qk.plan(recipe)`: what the recipe says, unless one of these is given."""

    gpu_mem: str | None = Field(None, description="GPU memory to plan for, in GiB: 24, 24G, 24GB and 24GiB all "
                                "mean 24 GiB (as GPU makers write it); M/MB/MiB are MiB; under 1 GiB is refused "
                                "(default: the memory of the named gpu, else of this machine's GPU).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: this machine's GPU if it has one (else a GPU of unknown memory); cuda: this "
        "machine's GPU, refused without one; cpu: training on the CPU (as train.device and bench's device).")
    gpu: str | None = Field(None, description="Plan for a GPU by name: rtx4090, a100-80gb, h100, ... (the table in "
                            "qlora_kit/planner/gpus.py); implies device cuda (default: none; device decides).")
    backend: BackendName | None = Field(None, description="Backend to plan for (default: the recipe's model.backend).")
    seq_len: int | None = Field(None, gt=0, description="Sequence length (default: the recipe's model.max_seq_length).")
    batch_size: int | None = Field(None, gt=0, description="Rows per step (default: the recipe's train.batch_size).")
    nproc: int | None = Field(None, gt=0, description="Plan one GPU of an N-process run (default: the recipe's "
                              "distributed.nproc x nnodes, else 1).")
    strategy: Literal["none", "ddp", "fsdp"] | None = Field(
        None, description="ddp: a full copy per GPU; fsdp: 4-bit weights, LoRA and optimizer states sharded over "
        "the processes (default: the recipe's distributed.strategy, ddp when nproc is above 1).")

    @field_validator("gpu_mem")
    @classmethod
    def _gpu_mem(cls, value: str | None) -> str | None:
        from qlora_kit.recipe.sizes import parse_gpu_memory

        if value is not None:
            parse_gpu_memory(value)
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _device_is_not_a_gpu(cls, value: Any) -> Any:
        """`--device t4` (how a GPU by name was once given) points to --gpu."""
        from qlora_kit.planner.gpus import find_gpu

        if isinstance(value, str) and value not in ("auto", "cpu", "cuda") and find_gpu(value):
            raise ValueForAnotherOption("auto, cpu or cuda", "for a GPU by name", "gpu", value)
        return "auto" if value is None else value  # JSON null (POST /v1/plan): the default, as before

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str | None, info: ValidationInfo) -> str | None:
        from qlora_kit.planner.gpus import GPUS, find_gpu

        if value is not None and find_gpu(value) is None:
            raise ValueError(f"unknown GPU {value!r}; known: {', '.join(GPUS)}, or give --gpu-mem SIZE")
        if value is not None and info.data.get("device") == "cpu":
            raise ValueError(f"{value} is a CUDA GPU, which does not go with device cpu; give one or the other")
        return value


class BenchOptions(StageOptions):
    """`qlora-kit bench RECIPE`, `qk.bench(recipe)` and the recipe's `bench:` section (flags override it)."""

    backends: list[BackendName] = Field(["unsloth", "hf"], min_length=1, description="Backends to compare; hf is "
                                        "the baseline.")
    methods: list[Literal["sft", "dpo", "orpo", "kto", "simpo", "grpo"]] | None = Field(
        None, min_length=1, description="Training methods to measure, e.g. sft,dpo: each cell trains its rows with "
        "that train.method (default: the recipe's train.method).")
    seq_lens: list[Positive] | None = Field(None, min_length=1, description="Sequence lengths (default: 512, 1024, "
                                            "2048, those within the model's context).")
    batch_sizes: list[Positive] | None = Field(None, min_length=1, description="Batch sizes (default: "
                                               "train.batch_size; auto: 2 on GPU, 4 on CPU).")
    steps: int = Field(10, gt=0, description="Optimizer steps per cell.")
    warmup: int = Field(3, ge=0, description="First steps excluded from tokens/s.")
    repeats: int = Field(1, gt=0, description="Runs per cell, backends interleaved; the report keeps the median "
                         "run by tokens/s and every run's numbers.")
    data: Literal["synthetic", "recipe"] = Field(
        "synthetic", description="synthetic: seeded random tokens (preference rows: a quarter prompt, equal-length "
        "answers); recipe: data.path cut into exact-length blocks (preference methods: its rows, cycled).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when a GPU is visible, else cpu.")
    mem_limit: str | None = Field(None, description="Cap each cell's memory, e.g. 8GiB, to see what a smaller "
                                  "machine could run (CUDA: a share of the GPU; CPU: the process's data segment "
                                  "limit) (default: no cap).")
    cell_timeout: int = Field(1800, gt=0, description="Seconds before a cell is stopped.")

    @field_validator("mem_limit")
    @classmethod
    def _mem_limit(cls, value: str | None) -> str | None:
        return _size(value)


# The stages whose options are declared here: command name -> (model, API function name).
STAGE_OPTIONS: dict[str, tuple[type[StageOptions], str]] = {
    "merge": (MergeOptions, "merge"), "export": (ExportOptions, "export"), "eval": (EvalOptions, "evaluate"),
    "plan": (PlanOptions, "plan"), "bench": (BenchOptions, "bench"),
}


def flag(name: str, default: Any = None) -> str:
    """The command-line flag of a field: `max_shard_size` -> `--max-shard-size`, `verify` (default True) ->
    `--no-verify`."""
    return ("--no-" if default is True else "--") + name.replace("_", "-")


def to_argv(options: StageOptions) -> list[str]:
    """The flags that give these options to the stage's command, defaults left out (how a stage goes to a child)."""
    argv: list[str] = []
    for name, info in type(options).model_fields.items():
        value = getattr(options, name)
        if value == info.default:
            continue
        if isinstance(value, bool):
            argv.append(flag(name, info.default))
        else:
            argv += [flag(name), ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def make_options(model: type[StageOptions], given: dict[str, Any], base: BaseModel | None = None, *,
                 caller: str | None = None, spelled: dict[str, str] | None = None) -> StageOptions:
    """`model` from the options given (over `base`, a recipe section, where the stage starts from one).
    A bad value is a UsageError in the caller's spelling: `--samples: 0 must be at least 1` for the command line
    (caller None; `spelled`: options given otherwise than by their flag, e.g. {"samples": "--set merge.samples"}),
    `qk.evaluate: samples: 0 must be at least 1` for the API (caller "qk.evaluate")."""
    from pydantic import ValidationError

    from qlora_kit.errors import UsageError

    check_names(model, given, caller)
    values = {**(base.model_dump(include=set(model.model_fields)) if base is not None else {}), **given}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ValueForAnotherOption) and name not in (spelled or {}):
            raise UsageError(cause.worded(name, caller)) from None
        where = f"{caller}: {name}" if caller else (spelled or {}).get(name) or flag(name)
        raise UsageError(f"{where}: {_problem(error)}") from None


def check_names(model: type[StageOptions], given: dict[str, Any], caller: str | None) -> None:
    """A keyword that is not one of the model's fields (the command line cannot give one: argparse refuses it)."""
    from qlora_kit.errors import UsageError

    unknown = sorted(set(given) - set(model.model_fields))
    if unknown:
        raise UsageError(f"{caller}: {unknown[0]}: not an option (options: {', '.join(model.model_fields)})")


def _problem(error: dict) -> str:
    """One pydantic error as the CLI has always worded it."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("greater_than", "greater_than_equal"):
        bound = ctx.get("gt", ctx.get("ge"))
        least = bound + 1 if kind == "greater_than" and str(value).lstrip("-").isdigit() else bound
        return f"{value} must be at least {least}"
    if kind == "too_short":
        return "name at least one value"
    if kind == "literal_error":
        return f"{value!r} is not one of: {ctx['expected'].replace(chr(39), '').replace(' or ', ', ')}"
    if kind in ("int_parsing", "int_from_float"):
        return f"{value!r} is not an integer"
    if kind == "float_parsing":
        return f"{value!r} is not a number"
    message = error["msg"]
    return message.removeprefix("Value error, ") if kind == "value_error" else f"{value!r}: {message[:1].lower()}" \
        f"{message[1:]}"
