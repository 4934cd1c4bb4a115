"""POST /v1/fine_tuning/jobs's body -> a recipe dict. The rule (also in docs/server.md):

    model                              -> the model table's entry: its recipe (or {model: {name: BASE}})
    training_file / validation_file    -> data.path / data.eval_path (the stored upload; no validation file:
                                          data.eval_path is unset and the recipe's data.eval_split stays)
    hyperparameters.n_epochs           -> train.epochs, and train.max_steps is unset (an explicit epoch count wins
                                          over the recipe's step count); "auto" keeps the recipe's
    hyperparameters.batch_size         -> train.batch_size ("auto" keeps the recipe's)
    hyperparameters.learning_rate_multiplier -> train.lr = the recipe's train.lr x the multiplier ("auto": x 1)
    seed                               -> train.seed
    always                             -> merge.enabled and export.enabled (so the result has a GGUF to chat
                                          with; export.quant stays the recipe's), eval.enabled false,
                                          output.dir ROOT/runs, output.name the job id

`hyperparameters` (legacy) and `method: {type: supervised, supervised: {hyperparameters: {...}}}` say the same;
giving both is refused, as are `method.type: dpo` and `reinforcement` (not supported yet) and `integrations`
other than [] (nothing is sent anywhere). `metadata` is stored and shown on the job, not used.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from qlora_kit.server.openai.errors import OpenAIError, bad_request

FIELDS = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "hyperparameters", "method",
          "integrations"}
HYPER = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": (float, 1e-6, 10.0)}
SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_request(body: Any) -> dict:
    """The body's fields, checked; the hyperparameters as {name: value or "auto"}. Raises 400 OpenAIErrors."""
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
    return {**body, "hyperparameters": _hyperparameters(body)}


def _hyperparameters(body: dict) -> dict:
    legacy, method = body.get("hyperparameters"), body.get("method")
    given, prefix = legacy, "hyperparameters"
    if method is not None:
        if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo", "reinforcement"):
            raise bad_request("method.type: one of supervised, dpo, reinforcement", "method.type")
        if method["type"] != "supervised":
            what = "preference tuning (dpo)" if method["type"] == "dpo" else "reinforcement fine-tuning"
            raise bad_request(f"method.type: {method['type']!r}: {what} is not yet supported by qlora-kit; use "
                              "method.type: supervised", "method.type", "unsupported_method")
        supervised = method.get("supervised")
        if supervised is not None and not isinstance(supervised, dict):
            raise bad_request("method.supervised: must be an object", "method.supervised")
        inner = (supervised or {}).get("hyperparameters")
        if inner is not None and legacy is not None:
            raise bad_request("give hyperparameters either at the top level (legacy) or in "
                              "method.supervised.hyperparameters, not both", "hyperparameters")
        if inner is not None:
            given, prefix = inner, "method.supervised.hyperparameters"
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise bad_request(f"{prefix}: must be an object", prefix)
    out = {}
    for name, value in given.items():
        if name not in HYPER:
            raise bad_request(f"{prefix}.{name}: unknown; supervised fine-tuning takes {', '.join(HYPER)}",
                              f"{prefix}.{name}", "invalid_hyperparameters")
        out[name] = _hyper(name, value, f"{prefix}.{name}")
    return {name: out.get(name, "auto") for name in HYPER}


def _hyper(name: str, value: Any, param: str):
    kind, low, high = HYPER[name]
    if value == "auto" or value is None:
        return "auto"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value))
    if not ok or not low <= value <= high:
        raise bad_request(f"{param}: {value!r}: must be \"auto\" or {'a number' if kind is float else 'an integer'} "
                          f"from {low:g} to {high:g}", param, "invalid_hyperparameters")
    return kind(value)


def map_recipe(base: dict, request: dict, data_path: str, eval_path: str | None, job_id: str) -> dict:
    """The job's recipe: the base recipe with the request mapped on (the rule in this module's docstring)."""
    raw = copy.deepcopy(base)
    data, train = _section(raw, "data"), _section(raw, "train")
    data["path"] = data_path
    data["eval_path"] = eval_path
    hp = request["hyperparameters"]
    if hp["n_epochs"] != "auto":
        train["epochs"], train["max_steps"] = hp["n_epochs"], None
    if hp["batch_size"] != "auto":
        train["batch_size"] = hp["batch_size"]
    if hp["learning_rate_multiplier"] != "auto":
        from qlora_kit.recipe.schema import TrainSection

        lr = train.get("lr", TrainSection.model_fields["lr"].default)
        if not isinstance(lr, (int, float)):
            raise OpenAIError(400, f"the model's recipe has train.lr {lr!r}: cannot scale it", "model")
        train["lr"] = float(lr) * hp["learning_rate_multiplier"]
    if request.get("seed") is not None:
        train["seed"] = request["seed"]
    _section(raw, "merge")["enabled"] = True
    _section(raw, "export")["enabled"] = True
    _section(raw, "eval")["enabled"] = False
    raw["output"] = {"dir": "runs", "name": job_id}
    return raw


def _section(raw: dict, name: str) -> dict:
    if not isinstance(raw.get(name), dict):
        raw[name] = {}
    return raw[name]
