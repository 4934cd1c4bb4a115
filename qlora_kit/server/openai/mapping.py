"""POST /v1/fine_tuning/jobs's body -> a recipe dict. The rule (also in docs/server.md):

    model                              -> the model table's entry: its recipe (or {model: {name: BASE}})
    training_file / validation_file    -> data.path / data.eval_path (the stored upload; no validation file:
                                          data.eval_path is unset and the recipe's data.eval_split stays)
    hyperparameters.n_epochs           -> train.epochs, and train.max_steps is unset (an explicit epoch count wins
                                          over the recipe's step count); "auto" keeps the recipe's
    hyperparameters.batch_size         -> train.batch_size ("auto" keeps the recipe's)
    hyperparameters.learning_rate_multiplier -> train.lr = the recipe's train.lr x the multiplier ("auto": x 1)
    method.type                        -> train.method: supervised -> sft (the preference section is dropped: its
                                          options are the preference methods'), dpo -> dpo (data.packing false:
                                          each answer is scored after its own prompt)
    method.dpo.hyperparameters.beta    -> preference.beta (0 < beta <= 2; "auto" keeps the recipe's, else our
                                          default, 0.1)
    method.type reinforcement          -> train.method grpo (the preference section dropped, data.packing false)
    method.reinforcement.grader        -> grpo.graders: [grader] (checked by qlora_kit.graders when the job is made;
                                          python and function graders run code: refused unless the server was
                                          started with --allow-remote-code)
    method.reinforcement.hyperparameters.batch_size -> prompts per step, as OpenAI counts them: train.batch_size =
                                          batch_size x grpo.num_generations (our batch counts completions)
    method.reinforcement.hyperparameters.compute_multiplier -> grpo.num_generations x the multiplier (at least 2)
    method.reinforcement.hyperparameters.eval_interval -> train.eval_steps
    seed                               -> train.seed
    always                             -> merge.enabled and export.enabled (so the result has a GGUF to chat
                                          with; export.quant stays the recipe's), eval.enabled false,
                                          output.dir ROOT/runs, output.name the job id

`hyperparameters` (legacy) and `method: {type: supervised|dpo|reinforcement, <type>: {hyperparameters: {...}}}` say
the same shared hyperparameters (beta only in method.dpo); giving both is refused, as are `integrations` other than
[] (nothing is sent anywhere) and the reinforcement hyperparameters without a counterpart here (reasoning_effort,
eval_samples). The files must hold the rows the method trains on (conversations for supervised, preference pairs
for dpo, prompts for reinforcement: `file_mismatch`, the rule of `data check`). `metadata` is stored and shown on
the job, not used.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from qlora_kit.server.openai.errors import OpenAIError, bad_request

FIELDS = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "hyperparameters", "method",
          "integrations"}
HYPER = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": (float, 1e-6, 10.0)}
METHOD_HYPER = {"supervised": HYPER, "dpo": {"beta": (float, 0, 2.0), **HYPER},  # beta: OpenAI's range
                "reinforcement": {**HYPER, "compute_multiplier": (float, 0, 10.0), "eval_interval": (int, 1, 10**6)}}
TRAIN_METHOD = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
ROWS = {"sft": "conversations to imitate", "pair": "preference pairs", "unpaired": "unpaired feedback (prompt, "
        "completion, label: KTO's rows)", "prompt": "prompts without answers (reinforcement rows)"}
NEEDS = {"supervised": 'conversations ({"messages": [...]} rows)',
         "dpo": 'preference pairs ({"input", "preferred_output", "non_preferred_output"} rows)',
         "reinforcement": 'prompts ({"messages": [...]} rows with the fields the grader reads)'}
SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_request(body: Any) -> dict:
    """The body's fields, checked; `method_type` supervised|dpo and the method's hyperparameters as {name: value
    or "auto"}. Raises 400 OpenAIErrors."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    extra = sorted(set(body) - FIELDS)
    if extra:
        raise bad_request(f"unknown field(s) {', '.join(extra)}; this endpoint takes {', '.join(sorted(FIELDS))}",
                          extra[0])
    for field in ("model", "training_file"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise bad_request(f"{field}: required (a string)", field)
    suffix, seed, metadata = body.get("suffix"), body.get("seed"), body.get("metadata")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
        raise bad_request(f"suffix: {suffix!r}: 1 to 64 letters, digits, '-', '_' or '.'", "suffix")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31):
        raise bad_request(f"seed: {seed!r}: an integer from 0 to 2147483647", "seed")
    if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items())):
        raise bad_request("metadata: at most 16 string keys (64 characters) with string values (512)", "metadata")
    if body.get("integrations"):
        raise bad_request("integrations: not supported by this server (it sends nothing anywhere)", "integrations")
    method, hyperparameters = _hyperparameters(body)
    grader = _grader(body) if method == "reinforcement" else None
    return {**body, "method_type": method, "hyperparameters": hyperparameters, "grader": grader}


def _grader(body: dict) -> dict:
    """method.reinforcement.grader, checked as `train` would load it (a 400 naming the problem)."""
    from pathlib import Path

    from qlora_kit.errors import UsageError
    from qlora_kit.graders import load_graders

    grader = (body["method"].get("reinforcement") or {}).get("grader")
    if not isinstance(grader, dict):
        raise bad_request("method.reinforcement.grader: required (an object: string_check, text_similarity, python, "
                          "multi, ...)", "method.reinforcement.grader")
    try:
        load_graders([grader], Path.cwd(), where="method.reinforcement.grader").close()
    except UsageError as exc:
        message = str(exc).replace("method.reinforcement.grader[0]", "method.reinforcement.grader", 1)
        raise bad_request(message, "method.reinforcement.grader", "invalid_grader") from None
    return grader


def _hyperparameters(body: dict) -> tuple[str, dict]:
    """(supervised|dpo, {name: value or "auto"} for each of the method's hyperparameters)."""
    legacy, method = body.get("hyperparameters"), body.get("method")
    kind, given, prefix = "supervised", legacy, "hyperparameters"
    if method is not None:
        if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo", "reinforcement"):
            raise bad_request("method.type: one of supervised, dpo, reinforcement", "method.type")
        kind = method["type"]
        other = sorted(set(method) - {"type", kind})
        if other:
            raise bad_request(f"method.{other[0]}: given, but method.type is {kind}; put the hyperparameters in "
                              f"method.{kind}", f"method.{other[0]}")
        block = method.get(kind)
        if block is not None and not isinstance(block, dict):
            raise bad_request(f"method.{kind}: must be an object", f"method.{kind}")
        inner = (block or {}).get("hyperparameters")
        if inner is not None and legacy is not None:
            raise bad_request(f"give hyperparameters either at the top level (legacy) or in "
                              f"method.{kind}.hyperparameters, not both", "hyperparameters")
        if inner is not None:
            given, prefix = inner, f"method.{kind}.hyperparameters"
    known = METHOD_HYPER[kind] if prefix.startswith("method.") else HYPER
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise bad_request(f"{prefix}: must be an object", prefix)
    out = {}
    for name, value in given.items():
        if name not in known:
            what = {"supervised": "supervised fine-tuning takes ", "dpo": "dpo takes ",
                    "reinforcement": "reinforcement takes "}[kind]
            if known is not METHOD_HYPER[kind]:
                what = "the top-level (legacy) hyperparameters are "
            raise bad_request(f"{prefix}.{name}: unknown; {what}{', '.join(known)}"
                              + (" (beta is dpo's: method.dpo.hyperparameters, with method.type dpo)" if name == "beta" else ""),
                              f"{prefix}.{name}", "invalid_hyperparameters")
        out[name] = _hyper(known[name], value, f"{prefix}.{name}")
    return kind, {name: out.get(name, "auto") for name in METHOD_HYPER[kind]}


def _hyper(rule: tuple, value: Any, param: str):
    kind, low, high = rule
    if value == "auto" or value is None:
        return "auto"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value))
    above = low < value if low == 0 else low <= value  # a range from 0 excludes it (beta 0: no preference term)
    if not (ok and above and value <= high):
        what = (f"a number above 0 and at most {high:g}" if low == 0 else
                f"{'a number' if kind is float else 'an integer'} from {low:g} to {high:g}")
        raise bad_request(f"{param}: {value!r}: must be \"auto\" or {what}", param, "invalid_hyperparameters")
    return kind(value)


def file_mismatch(method: str, kind: str, fmt: str, param: str, file: dict) -> str | None:
    """Why an upload whose rows are `kind` (formats' Example.kind) cannot train with method.type `method`, in the
    API's words (None: it can). The decision is data.prepare.method_mismatch's, the one `train` and `data check`
    make."""
    from qlora_kit.data.prepare import method_mismatch

    if method_mismatch(TRAIN_METHOD[method], {kind}, fmt) is None:
        return None
    fix = {"sft": 'upload preference pairs or use method.type "supervised"',
           "prompt": 'create the job with method: {"type": "reinforcement", "reinforcement": {"grader": ...}}, or '
                     "upload rows with answers",
           "pair": 'create the job with method: {"type": "dpo"}, or upload conversations',
           "unpaired": "give each prompt a preferred and a non-preferred output (dpo), or upload conversations"}
    return (f"{param}: {file['id']} ({file['filename']}) holds {ROWS[kind]} (format {fmt}), but method.type "
            f"{method} trains on {NEEDS[method]}; {fix[kind]}")


def map_recipe(base: dict, request: dict, data_path: str, eval_path: str | None, job_id: str) -> dict:
    """The job's recipe: the base recipe with the request mapped on (the rule in this module's docstring)."""
    raw = copy.deepcopy(base)
    data, train = _section(raw, "data"), _section(raw, "train")
    data["path"] = data_path
    data["eval_path"] = eval_path
    hp = request["hyperparameters"]
    if hp["n_epochs"] != "auto":
        train["epochs"], train["max_steps"] = hp["n_epochs"], None
    if hp["batch_size"] != "auto" and request["method_type"] != "reinforcement":
        train["batch_size"] = hp["batch_size"]
    if hp["learning_rate_multiplier"] != "auto":
        from qlora_kit.recipe.schema import TrainSection

        lr = train.get("lr", TrainSection.model_fields["lr"].default)
        if not isinstance(lr, (int, float)):
            raise OpenAIError(400, f"the model's recipe has train.lr {lr!r}: cannot scale it", "model")
        train["lr"] = float(lr) * hp["learning_rate_multiplier"]
    if request.get("seed") is not None:
        train["seed"] = request["seed"]
    _method(raw, request["method_type"], hp, request.get("grader"))
    _section(raw, "merge")["enabled"] = True
    _section(raw, "export")["enabled"] = True
    _section(raw, "eval")["enabled"] = False
    raw["output"] = {"dir": "runs", "name": job_id}
    return raw


def _method(raw: dict, method: str, hp: dict, grader: dict | None = None) -> None:
    _section(raw, "train")["method"] = TRAIN_METHOD[method]
    if method != "reinforcement":
        raw.pop("grpo", None)  # a GRPO recipe's options; an error under the other methods
    if method in ("supervised", "reinforcement"):
        raw.pop("preference", None)  # a preference recipe's options; an error under sft and grpo
    if method == "supervised":
        return
    _section(raw, "data")["packing"] = False  # SFT's packing; the recipe's choice for SFT rows does not apply
    if method == "reinforcement":
        _reinforcement(raw, hp, grader)
        return
    if hp["beta"] != "auto":
        _section(raw, "preference")["beta"] = hp["beta"]


def _reinforcement(raw: dict, hp: dict, grader: dict) -> None:
    from qlora_kit.recipe.grpo import GrpoSection

    grpo, train = _section(raw, "grpo"), _section(raw, "train")
    grpo["graders"] = [grader]
    groups = grpo.get("num_generations", GrpoSection.model_fields["num_generations"].default)
    if hp["compute_multiplier"] != "auto":
        groups = grpo["num_generations"] = max(2, round(groups * hp["compute_multiplier"]))
    if hp["batch_size"] != "auto":  # OpenAI's batch counts prompts; ours counts completions
        train["batch_size"], train["grad_accum"] = hp["batch_size"] * groups, 1
    if hp["eval_interval"] != "auto":
        train["eval_steps"] = hp["eval_interval"]


def _section(raw: dict, name: str) -> dict:
    if not isinstance(raw.get(name), dict):
        raw[name] = {}
    return raw[name]
