"""The typed recipe: one section per pipeline stage.

A recipe is parsed once, at the edge (`qlora_kit.recipe.load`); every stage receives only its own section plus
explicit inputs. Unknown keys are errors (never silently ignored). Fields whose best value depends on the device
accept "auto"; `qlora_kit.training.auto` resolves them, and the resolved recipe is what a run directory records.
Field descriptions feed `validate` messages and `qlora-kit schema`.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, field_validator, model_validator

from qlora_kit.recipe.options import (BackendName, BenchOptions, EvalOptions, ExportOptions, MergeOptions,
                                     Section)
from qlora_kit.recipe.grpo import GrpoSection, check_grpo
from qlora_kit.recipe.methods import PreferenceSection, check_method
from qlora_kit.recipe.registry import registry_choice

Auto = Literal["auto"]

# What varies is named by its registry (backends, data formats, GGUF types): plugins that register a variant are
# accepted here too, and `qlora-kit schema` lists whatever is registered.
FormatName = registry_choice("qlora_kit.data.formats:FORMATS", extra=("auto",))


class ModelSection(Section):
    name: str = Field(
        description="Base model: a local directory, a Hugging Face Hub id, a built-in model "
        "('builtin:tiny-llama', created locally, no network), or a GGUF dequantized once into the cache: "
        "'gguf:PATH' (or a path ending in .gguf), 'pkg:PACKAGE/FILE.gguf' (a GGUF shipped in an installed Python "
        "package) or 'ollama:NAME[:TAG]' (from Ollama's local store, OLLAMA_MODELS)."
    )
    backend: BackendName = Field(
        "unsloth",
        description="'unsloth': Unsloth FastLanguageModel (fast CUDA kernels). 'hf': plain transformers + peft + "
        "bitsandbytes, the benchmark baseline and the fallback for architectures Unsloth lacks.",
    )
    max_seq_length: int = Field(2048, gt=0, description="Longest training sequence in tokens; longer rows are truncated.")
    load_in_4bit: bool = Field(True, description="Quantize the base model to 4-bit NF4 with double quantization (QLoRA).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto: bfloat16 on GPUs that support it, else float16; float32 on CPU."
    )
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub model. Off unless you trust it.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base model.")
    adapter: str | None = Field(
        None, description="Start from a trained LoRA adapter instead of a new one: a run directory (its adapter/) or "
        "an adapter directory, trained on this base. Its LoRA shape replaces the lora section. With dpo or kto the "
        "reference is then the model with this adapter (SFT, then DPO), not the raw base.")


class DataSection(Section):
    path: str = Field(
        description="Training data: a local .jsonl/.json/.csv/.parquet file, 'hf:ORG/NAME' for a Hub dataset, or "
        "'builtin:tiny-chat' (the small chat dataset shipped with qlora-kit)."
    )
    split: str = Field("train", description="Split to read from a Hub dataset.")
    format: FormatName = Field(
        "auto", description="Row format; auto detects it from the columns of the first row."
    )
    columns: dict[str, str] = Field(
        {}, description="Your data's column names for the format's own, e.g. {prompt: question, chosen: good, "
        "rejected: bad}: each key a format column (messages, conversations, instruction, input, output, prompt, "
        "completion, chosen, rejected, label, text, input, preferred_output, non_preferred_output, and tools: the "
        "functions a row may call), each value the name in your data.")
    chat_template: str = Field(
        "auto",
        description="auto: the tokenizer's own chat template. Or a built-in one by name (chatml, llama-3, mistral, "
        "gemma, alpaca, qwen3), for tokenizers without a template or to override it. Rows with tools need one that "
        "renders them (chatml, llama-3, mistral, qwen3, or the tokenizer's own if it does).",
    )
    system_prompt: str | None = Field(None, description="System message added to conversations that have none.")
    train_on: Literal["responses", "all"] = Field(
        "responses", description="responses: loss on assistant tokens only. all: loss on every token."
    )
    train_reasoning: bool = Field(
        True, description="Train the thinking of assistant turns that have it (reasoning_content, or a <think> block "
        "opening the content). false: the thinking stays in the text as context; only what follows it is trained.")
    eval_split: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of rows held out for evaluation (0: none).")
    eval_path: str | None = Field(None, description="Separate evaluation file (same sources as path).")
    packing: bool = Field(False, description="Concatenate short rows into max_seq_length blocks (faster on short rows).")
    max_rows: int | None = Field(None, gt=0, description="Use at most this many rows (after shuffling with train.seed).")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="error: a row that cannot be read or converted (bad JSON, not UTF-8, wrong columns) "
        "stops training. skip: drop such rows on purpose; the count and their lines are reported.")

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v):
        from qlora_kit.data.formats import FORMATS

        known = sorted({c for f in FORMATS.values() for c in f.columns} | {"input", "tools"})
        for key in v:
            if key not in known:
                raise ValueError(f"{key!r} is not a column of any data format; known: {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _one_eval_source(self) -> "DataSection":
        if self.eval_split > 0 and self.eval_path:
            raise ValueError("set data.eval_split or data.eval_path, not both")
        return self


class LoraSection(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rslora).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear",
        description="Modules to adapt: 'all-linear' (every attention and MLP projection) or a list of module names.",
    )
    rslora: bool = Field(False, description="Rank-stabilized LoRA scaling (alpha/sqrt(r)).")

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one module, or be 'all-linear'")
        return v


class TrainSection(Section):
    method: Literal["sft", "dpo", "orpo", "kto", "simpo", "grpo"] = Field(
        "sft", description="sft: supervised fine-tuning on conversations. dpo, orpo, simpo: preference pairs "
        "(prompt, chosen, rejected). kto: unpaired feedback (prompt, completion, label), or pairs split into a "
        "desirable and an undesirable row. The preference methods' options are in the preference section. grpo: "
        "reinforcement fine-tuning: completions sampled from the model for each prompt, rewarded by the graders "
        "of the grpo section.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    lr: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps spent warming up.")
    batch_size: Union[Auto, int] = Field("auto", description="Rows per device step. auto: 2 on GPU, 4 on CPU.")
    grad_accum: Union[Auto, int] = Field(
        "auto", description="Steps accumulated per optimizer step. auto: 4 on GPU, 1 on CPU."
    )
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"] = Field(
        "auto", description="auto: adamw_8bit (bitsandbytes) on GPU, adamw_torch on CPU."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: Union[Auto, bool] = Field(
        "auto", description="Recompute activations to save memory. auto: on for GPU, off on CPU."
    )
    seed: int = Field(42, description="Seed for LoRA init, data order and dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when a GPU is visible, else cpu.")
    logging_steps: int = Field(10, gt=0, description="Log loss every N optimizer steps.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps (default: once at the end).")
    save_steps: int = Field(100, gt=0, description="Write a resumable checkpoint every N steps.")
    save_total_limit: int = Field(2, gt=0, description="Keep at most this many checkpoints.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        [], description="Metric loggers to send training logs to (off by default; nothing is sent anywhere unless "
        "named here). Each needs its package: pip install 'qlora-kit[tensorboard]' (or wandb, mlflow).")

    @field_validator("batch_size", "grad_accum")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v <= 0:
            raise ValueError("must be a positive integer or 'auto'")
        return v


# The stages after training: each section is the stage's options model (recipe/options.py, also the command's
# flags and the API's keyword arguments) plus `enabled`, which makes `train` run the stage when training ends.

class MergeSection(MergeOptions):
    enabled: bool = Field(False, description="Merge the adapter into 16-bit weights (RUN_DIR/merged/) when training ends.")


class ExportSection(ExportOptions):
    enabled: bool = Field(False, description="Export GGUF files (RUN_DIR/gguf/) after training and merging.")


class EvalSection(EvalOptions):
    enabled: bool = Field(False, description="Run `qlora-kit eval` when training (and merge/export) end.")


class BenchSection(BenchOptions):
    """Defaults for `qlora-kit bench` (its command-line flags override them)."""


class DistributedSection(Section):
    """Several processes (GPUs, or machines) through PyTorch's own launcher, torchrun (see qlora_kit.distributed).

    `qlora-kit train RECIPE --nproc N` is the short form of `strategy: ddp, nproc: N`."""

    strategy: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="none: one process. ddp: one full copy of the model per process, gradients averaged "
        "(both backends). fsdp: 4-bit weights, LoRA weights and optimizer states sharded across processes "
        "(FSDP2 fully_shard; hf backend only).")
    nproc: Union[Auto, int] = Field(
        "auto", description="Processes per machine. auto: one per visible GPU (1 on a CPU-only machine).")
    nnodes: int = Field(1, gt=0, description="Machines taking part; start `qlora-kit train` on each of them.")
    node_rank: int = Field(0, ge=0, description="This machine's index, 0 .. nnodes-1 (0 writes the run directory).")
    master_addr: str = Field("127.0.0.1", min_length=1,
                             description="Address of machine 0, reachable from every machine (rendezvous).")
    master_port: int = Field(29500, gt=0, lt=65536, description="Free TCP port on machine 0 for the rendezvous.")

    @field_validator("nproc")
    @classmethod
    def _positive_nproc(cls, v):
        if v != "auto" and v <= 0:
            raise ValueError("must be a positive integer or 'auto'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DistributedSection":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"distributed.node_rank {self.node_rank} must be below distributed.nnodes "
                             f"({self.nnodes}); machines are numbered 0 .. {self.nnodes - 1}")
        if self.strategy == "none" and (self.nnodes > 1 or (self.nproc != "auto" and self.nproc > 1)):
            raise ValueError("several processes need distributed.strategy: ddp or fsdp (strategy none is one "
                             "process); set distributed.strategy: ddp")
        if self.strategy == "fsdp" and self.nproc == 1 and self.nnodes == 1:
            raise ValueError("distributed.strategy fsdp shards the model across processes and needs at least 2; "
                             "set distributed.nproc: 2 or more, or strategy: none")
        return self


class OutputSection(Section):
    dir: str = Field("runs", description="Parent directory of run directories.")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run directory name (default: the recipe's file name)."
    )


class Recipe(Section):
    @model_validator(mode="after")
    def _export_needs_merge(self) -> "Recipe":
        if self.export.enabled and not self.merge.enabled:
            raise ValueError("export.enabled needs merge.enabled: GGUF is written from the merged 16-bit model")
        if self.distributed.strategy == "fsdp" and self.model.backend == "unsloth":
            raise ValueError("distributed.strategy fsdp needs model.backend: hf (Unsloth's NF4 weights do not work "
                             "with FSDP's fully_shard); use strategy: ddp with unsloth, or model.backend: hf")
        check_method(self.train.method, self.preference)
        check_grpo(self.train.method, self.grpo, self.train.batch_size, self.train.grad_accum)
        if self.train.method != "sft" and self.data.packing:
            raise ValueError(f"data.packing concatenates SFT rows; train.method {self.train.method} scores each "
                             "answer after its own prompt. Set data.packing: false")
        return self

    model: ModelSection
    data: DataSection
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    grpo: GrpoSection = Field(default_factory=GrpoSection)
    merge: MergeSection = Field(default_factory=MergeSection)
    export: ExportSection = Field(default_factory=ExportSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    bench: BenchSection = Field(default_factory=BenchSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    output: OutputSection = Field(default_factory=OutputSection)
