"""Run the comparison: every system answers every held-out row (greedy) and scores the reference (loss). For a
preference run (train.method other than sft) every system with logits also scores the held-out pairs
(eval/preference.py), and the reference of the generations is the chosen answer.

Nothing is marked complete until it is: the report is written to a temporary directory next to RUN_DIR/eval and
renamed at the end. Runs with plain transformers (no Unsloth), like merge and export.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from qlora_kit.errors import UsageError
from qlora_kit.eval import recorded as evrecorded
from qlora_kit.eval import rows as evrows
from qlora_kit.eval.scoring import METRICS, score
from qlora_kit.eval.tool_eval import TOOL_METRICS, score_row, tool_family, tool_summary
from qlora_kit.eval import preference as evpref
from qlora_kit.eval.graded import extra_scores
from qlora_kit.eval.names import gguf_path, merged_dir, parse_systems, reference_dir, template_name
from qlora_kit.eval.systems import open_system
from qlora_kit.recipe.options import EvalOptions

REPORT_VERSION = 1


def default_systems(run_dir: Path, recipe=None) -> list[str]:
    """base, fewshot, adapter, merged and every GGUF the run has. A preference run drops fewshot (it gets no
    preference scores: eval/preference.py) and adds reference when it started from a trained adapter."""
    names = ["base", "fewshot", "adapter"]
    if recipe is not None and recipe.train.method not in ("sft", "grpo"):
        names = ["base", *(["reference"] if recipe.model.adapter else []), "adapter"]
    if (run_dir / "merged" / "config.json").is_file():
        names.append("merged")
    names += [f"gguf:{p.stem.rsplit('-', 1)[-1]}" for p in sorted((run_dir / "gguf").glob(f"{run_dir.name}-*.gguf"))]
    return names


def run_eval_section(run_dir: str | Path):
    """The run's own `eval:` section (RUN_DIR/recipe.yaml), which `qlora-kit eval RUN` and `qk.evaluate(RUN)` start
    from as `train` does (max_new_tokens, samples, systems, ...); None when the run has no readable recipe (then
    eval's own check names what is missing)."""
    from qlora_kit.errors import QKError
    from qlora_kit.recipe import load_recipe

    path = Path(run_dir) / "recipe.yaml"
    try:
        return load_recipe(path).eval if path.is_file() else None
    except QKError:
        return None


def run_eval(run_dir: str | Path, options: EvalOptions, log, *, out: str | Path | None = None,
             warnings: tuple[str, ...] | list[str] = ()) -> Path:
    """The eval stage (qk.evaluate, `qlora-kit eval`), recorded in the run's events.jsonl; returns the report dir."""
    from qlora_kit.eventlog import run_stage

    check_eval(run_dir, options)  # refused here: nothing reaches the run's events.jsonl
    with run_stage(log, Path(run_dir)):
        for message in warnings:
            log.emit("warning", message=message, source="plugins")
        return evaluate(run_dir, options, out, log=log)


def evaluate(run_dir: str | Path, options: EvalOptions, out: str | Path | None = None, log=None) -> Path:
    from qlora_kit.eventlog import emit_artifact, stage

    with stage(log, "eval"):
        out, warnings = _evaluate(Path(run_dir), options, out)
    for message in warnings:
        if log is not None:
            log.emit("warning", message=message, source="eval")
    for name in ("report.json", "report.md", "predictions.jsonl", "preference.jsonl", "scores.png", "stages.png"):
        if (out / name).is_file():
            emit_artifact(log, "eval_report" if name.startswith("report") else "eval_" + name.split(".")[0],
                          out / name)
    return out


def check_eval(run_dir: str | Path, options: EvalOptions) -> tuple:
    """What eval refuses before any work (exit 2): (run, its status, systems, what they need: a GGUF file, the merged
    directory, the starting adapter, a parsed file of recorded answers). The CLI checks it before it records into
    the run's log, so a refused eval leaves no event there."""
    from qlora_kit.recipe import load_recipe
    from qlora_kit.training.rundir import RunDir

    run = RunDir(Path(run_dir))
    status = run.require_complete("eval")
    recipe = load_recipe(run.recipe)
    systems = parse_systems(options.systems) if options.systems else default_systems(run.root, recipe)
    paths = {s: gguf_path(run.root, s.split(":", 1)[1]) for s in systems if s.startswith("gguf:")}
    if "merged" in systems:
        paths["merged"] = merged_dir(run.root)
    if "reference" in systems:
        paths["reference"] = reference_dir(recipe)
    paths.update({s: evrecorded.load_recorded(s.split(":", 1)[1]) for s in systems if s.startswith("recorded:")})
    return run, status, systems, paths


def _evaluate(run_dir: Path, options: EvalOptions, out) -> tuple[Path, list[str]]:
    from qlora_kit.recipe import load_recipe

    run, status, systems, paths = check_eval(run_dir, options)
    recipe = load_recipe(run.recipe)
    scorer = extra_scores(recipe, options.scorer)  # eval.scorer, and a GRPO run's graders
    items = evrows.load_items(recipe, options.data)
    held, train, source = evrows.held_out(recipe, options.data, items)
    rows, leaked, warnings = _clean_rows(held, train, source, options)
    matched = {s: evrecorded.match(paths[s], rows, held + train, recipe.data.system_prompt)
               for s in systems if s.startswith("recorded:")}  # refused here, before anything is written
    warnings += [m.warning for m in matched.values() if m.warning]
    preference = items if recipe.train.method not in ("sft", "grpo") else None
    out = Path(out) if out else run.root / "eval"
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shots = evrows.few_shot(train, options.fewshot, options.seed, held)
        results, pset = _run_systems(run, recipe, status, systems, paths, rows, shots, options, scorer, matched,
                                     preference)
        from qlora_kit.eval.report import write_report

        report = {"version": REPORT_VERSION, "run": str(run.root), "rows_from": source, "rows": len(rows),
                  "leaked_rows_excluded": len(leaked), "fewshot_examples": [s.where for s in shots],
                  "max_new_tokens": options.max_new_tokens, "scorer": options.scorer, "systems": systems,
                  **({"graders": scorer.graders.describe()} if scorer.graders is not None else {}),
                  "method": recipe.train.method,
                  **({"recorded": {s: m.summary for s, m in matched.items()}} if matched else {}),
                  **({"preference": pset.summary()} if pset else {})}
        warnings += _pair_warnings(pset)
        warnings += write_report(tmp, report, rows, results, options, warnings, pset)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        scorer.close()
    return out, warnings


def _clean_rows(held, train, source, options) -> tuple[list, list, list[str]]:
    """(rows to evaluate, leaked rows, warnings): rows that repeat training rows are excluded, and said so."""
    clean, leaked = evrows.split_leaked(held, train)
    warnings = []
    if leaked:
        warnings.append(f"{len(leaked)} held-out row(s) also occur in the training data and were excluded "
                        f"(first: {leaked[0].where})")
    if not clean:
        raise UsageError(f"{source}: every held-out row also occurs in the training data; nothing left to evaluate")
    rows = clean[: options.samples] if options.samples else clean
    if len(rows) < 20:
        warnings.append(f"only {len(rows)} held-out rows: the 95% interval on any difference is wide; 20 or more "
                        "rows are needed to tell small gains from luck")
    return rows, leaked, warnings


def _pair_warnings(pset) -> list[str]:
    if pset is None:
        return []
    warnings = [f"{len(pset.leaked)} held-out preference row(s) also occur in the training data and were excluded "
                f"(first: {pset.leaked[0]})"] if pset.leaked else []
    if pset.dropped:
        warnings.append(f"{pset.dropped} held-out preference row(s) leave no room for an answer in "
                        "model.max_seq_length and were not scored (training drops them too)")
    if 0 < len(pset.pairs) < 20:
        warnings.append(f"only {len(pset.pairs)} held-out pairs: the 95% interval on the preference accuracy is "
                        "wide; 20 or more pairs are needed to tell small gains from luck")
    return warnings


def _run_systems(run, recipe, status, systems, paths, rows, shots, options, scorer, matched, preference):
    """(results per system, the scored preference rows or None): every system loaded once, then scored."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.adapter)
    template = template_name(run.adapter)
    stop, eot = _stops(template, tokenizer)
    prompts = {"plain": [_encode(tokenizer, list(r.prompt), r) for r in rows],
               "fewshot": [_encode(tokenizer, evrows.with_shots(r, shots), r) for r in rows]}
    family = tool_family(template, tokenizer, rows)
    pset = evpref.build(tokenizer, recipe, *preference, options.samples) if preference else None
    n_ctx = max([len(p) + len(a) + options.max_new_tokens for p, a in prompts["fewshot"] + prompts["plain"]]
                + [pset.longest if pset else 0]) + 8
    results, shared = {}, {}
    for name in systems:
        kind = name.split(":", 1)[0]
        if kind == "recorded":
            results[name] = _score_recorded(matched[name].answers, rows, scorer, family)
        else:
            t0 = time.perf_counter()
            system = open_system(name, run, recipe, status, paths, n_ctx, shared)
            load_s = time.perf_counter() - t0
            encoded = prompts["fewshot" if kind == "fewshot" else "plain"]
            results[name] = _score_system(system, encoded, rows, tokenizer, (stop, eot, family), options, scorer)
            results[name]["load_seconds"] = round(load_s, 3)
        if pset is not None:
            results[name].update(evpref.absent(name) if evpref.not_scored(name) else evpref.score(system, pset))
        if kind in ("merged", "gguf"):
            system.close()
    return results, pset


def _score_system(system, encoded, rows, tokenizer, ends, options, scorer) -> dict:
    from qlora_kit.runtime.memory import peak_rss_bytes

    stop, eot, family = ends
    per_row, nll, answer_tokens, gen_tokens, gen_seconds = [], 0.0, 0, 0, 0.0
    for (prompt, answer), row in zip(encoded, rows):
        out = system.generate(prompt, options.max_new_tokens, stop)
        text = _cut(tokenizer.decode(out.ids, skip_special_tokens=True), eot).strip()
        scores = score(text, row.reference)
        scores.update(scorer.scores(text, row))
        if family is not None:  # calls are parsed from the text with the markers kept ([TOOL_CALLS] is special)
            scores.update(score_row(_cut(tokenizer.decode(out.ids), eot), row, family))
        row_nll = system.nll(prompt, answer)
        nll += row_nll
        answer_tokens += len(answer)
        gen_tokens += len(out.ids)
        gen_seconds += out.seconds
        per_row.append({"prediction": text, "scores": scores, "prompt_tokens": len(prompt),
                        "generated_tokens": len(out.ids), "loss": round(row_nll / max(len(answer), 1), 6)})
    loss = nll / max(answer_tokens, 1)
    metrics = [*METRICS, *scorer.metrics, *(TOOL_METRICS if family else [])]
    return {"rows": per_row, "loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4),
            **{m: round(sum(r["scores"][m] for r in per_row) / len(per_row), 6) for m in metrics},
            "prompt_tokens_per_request": round(sum(r["prompt_tokens"] for r in per_row) / len(per_row), 2),
            "generated_tokens_per_s": round(gen_tokens / gen_seconds, 2) if gen_seconds else None,
            "process_peak_rss_bytes": peak_rss_bytes(), **tool_summary(per_row, family)}


def _score_recorded(answers: list[str], rows, scorer, family: str | None = None) -> dict:
    """Scored as a generated answer is (stripped, the same metrics); nothing a recorded answer lacks is made up:
    no logits, so no loss or perplexity; its prompts were never tokenized here (and the old model's tokenizer is
    not ours), so no prompt tokens; no timing."""
    per_row = []
    for text, row in zip(answers, rows):
        text = text.strip()
        scores = score(text, row.reference)
        scores.update(scorer.scores(text, row))
        if family is not None:
            scores.update(score_row(text, row, family))
        per_row.append({"prediction": text, "scores": scores, "prompt_tokens": None, "generated_tokens": None,
                        "loss": None})
    metrics = [*METRICS, *scorer.metrics, *(TOOL_METRICS if family else [])]
    return {"rows": per_row, "loss": None, "perplexity": None,
            **{m: round(sum(r["scores"][m] for r in per_row) / len(per_row), 6) for m in metrics},
            "prompt_tokens_per_request": None, "generated_tokens_per_s": None, "load_seconds": None,
            **tool_summary(per_row, family), "not_available": ["loss", "perplexity", "prompt_tokens_per_request", "generated_tokens_per_s"]}


def _encode(tokenizer, prompt_messages: list[dict], row) -> tuple[list[int], list[int]]:
    """(prompt ids ending with the assistant header, reference ids including the end-of-turn marker)."""
    from qlora_kit.data.encode import render

    tools = list(row.tools) if row.tools else None
    prompt_text = render(tokenizer, prompt_messages, add_generation_prompt=True, tools=tools)
    full_text = render(tokenizer, prompt_messages + [row.answer], False, tools=tools)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] == prompt:
        return prompt, full[len(prompt):]
    return prompt, tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]


def _stops(name: str, tokenizer) -> tuple[set[int], tuple[str, ...]]:
    """Token ids and strings that end an assistant turn for the chat template used in training (`name`)."""
    from qlora_kit.data.templates import CHAT_TEMPLATES

    ends = CHAT_TEMPLATES[name].end_of_turn if name in CHAT_TEMPLATES else ()
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for text in ends:
        tok = tokenizer.encode(text.strip(), add_special_tokens=False)
        if len(tok) == 1:
            ids.add(tok[0])
    return ids, tuple(e.strip() for e in ends if e.strip())


def _cut(text: str, ends: tuple[str, ...]) -> str:
    for end in ends:
        if end in text:
            text = text[: text.index(end)]
    return text
