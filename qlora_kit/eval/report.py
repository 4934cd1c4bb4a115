"""The eval report: report.json (versioned), report.md, predictions.jsonl, two charts, and the verdict.

The verdict compares the tuned model (adapter, else merged, else the first GGUF) with the better of the two
cheaper alternatives (base zero-shot, base few-shot) on the primary metric (a custom scorer when the recipe names
one, else exact match), row by row, with a 95% paired bootstrap interval: "beat" only when the interval is above
zero, "did NOT help" when it is below, otherwise "could not tell". It also says how many prompt tokens per request
fine-tuning saves against few-shot prompting (only where the tuned system is at least as good; otherwise what
few-shot prompting costs) and how much of the gain each GGUF keeps. Each `recorded:FILE` system (an old model's
answers) gets one more sentence on the same rows and the same interval rule: the tuned model beat it, matches it
(the interval includes zero and rules out a loss of more than 5 points), did NOT match it, or it could not tell.
A recorded system has no loss, perplexity, prompt tokens or speed: null in report.json, "n/a" in report.md.
A preference run's verdict is eval/preference_report.py's (preference accuracy on held-out pairs), followed by this
one on the generations scored against the chosen answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlora_kit.eval.scoring import METRICS, bootstrap_interval


def write_report(out: Path, report: dict, rows, results: dict, options, warnings: list[str], pset=None) -> list[str]:
    """Write every file; return the warnings found while judging (added to `warnings` in the report too). `pset`:
    a preference run's scored rows (eval/preference.py), else None."""
    tools = any("tool_calls" in r for r in results.values())  # the held-out rows have tools (eval/tool_eval.py)
    metric = "custom" if options.scorer else "reward" if "graders" in report else \
        "tool_call_exact" if tools else "exact_match"
    report["tool_calls"] = tools
    verdict, extra = judge(results, metric, options)
    if pset is not None:
        from qlora_kit.eval import preference_report as pref

        preference, more = pref.judge_preference(results, report["method"], options)
        verdict, extra = pref.combine(preference, verdict), more + extra
        pref.write_pairs(out, pset, results)
    warnings = warnings + extra
    report.update(metric=metric, verdict=verdict, warnings=warnings,
                  results={name: {k: v for k, v in r.items() if k not in ("rows", "preference_rows")}
                           for name, r in results.items()})
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"where": row.where, "prompt": list(row.prompt), "reference": row.reference,
                                 "systems": {name: r["rows"][i] for name, r in results.items()}},
                                ensure_ascii=False) + "\n")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    _charts(out, report)
    return extra


def judge(results: dict, metric: str, options) -> tuple[dict, list[str]]:
    tuned = next((n for n in ("adapter", "merged") if n in results), None) or \
        next((n for n in results if n.startswith("gguf:")), None)
    cheap = [n for n in ("base", "fewshot") if n in results]
    recorded = [n for n in results if n.startswith("recorded:")]
    if tuned is None or not (cheap or recorded):
        return {"text": "no verdict: compare a tuned system (adapter, merged or gguf:TYPE) with base, fewshot or "
                        "recorded:FILE", "outcome": "none"}, []
    # `outcome` stays the answer to "did fine-tuning help?" (none without a cheaper alternative to compare with).
    verdict = _against_cheap(results, tuned, cheap, metric, options) if cheap else \
        {"text": "", "outcome": "none", "tuned": tuned, "metric": metric}
    against = [_against_recorded(results, tuned, name, metric, options) for name in recorded]
    if against:
        verdict["recorded"] = against
        verdict["text"] = " ".join([verdict["text"], *(a["text"] for a in against)]).strip()
    return verdict, _gguf_warnings(results, metric, options)


def _against_cheap(results: dict, tuned: str, cheap: list[str], metric: str, options) -> dict:
    baseline = max(cheap, key=lambda n: results[n][metric])
    diffs = [t["scores"][metric] - b["scores"][metric]
             for t, b in zip(results[tuned]["rows"], results[baseline]["rows"])]
    delta = sum(diffs) / len(diffs)
    low, high = bootstrap_interval(diffs, seed=options.seed)
    label, points = _label(baseline), f"{abs(delta) * 100:.0f} points of {metric.replace('_', ' ')}"
    interval = f"95% interval {low * 100:+.0f} to {high * 100:+.0f} points over {len(diffs)} rows"
    if low > 0:
        outcome, text = "better", f"Fine-tuning beat {label} by {points} ({interval})"
    elif high < 0:
        outcome, text = "worse", f"Fine-tuning did NOT help: {label} beat it by {points} ({interval})"
    else:
        outcome, text = "unclear", (f"Fine-tuning did not clearly help: {tuned} vs {label} differ by "
                                    f"{delta * 100:+.0f} points of {metric.replace('_', ' ')}, and the {interval} "
                                    "includes zero")
    if "fewshot" in results:
        text += _against_fewshot(results, tuned, metric, outcome, options.seed)
    keeps = []
    base_score = results[baseline][metric]
    gain = results[tuned][metric] - base_score
    for name in (n for n in results if n.startswith("gguf:")):
        if gain > 0:
            keeps.append(f"{name.split(':')[1].upper()} keeps {(results[name][metric] - base_score) / gain:.0%} "
                         "of the gain")
    text += ("; " + ", ".join(keeps) if keeps else "") + "."
    return {"text": text, "outcome": outcome, "tuned": tuned, "baseline": baseline, "metric": metric,
            "difference": round(delta, 6), "interval95": [round(low, 6), round(high, 6)], "rows": len(diffs)}


def _against_recorded(results: dict, tuned: str, name: str, metric: str, options) -> dict:
    """The migration check, tuned - recorded row by row: "beat" only when the 95% interval is above zero, "did NOT
    match" when it is below; "matches" when it includes zero and rules out a loss of more than
    options.match_margin (the question is whether the old model can go without losing quality); else unclear."""
    diffs = [t["scores"][metric] - o["scores"][metric] for t, o in zip(results[tuned]["rows"], results[name]["rows"])]
    low, high = bootstrap_interval(diffs, seed=options.seed)
    rows, delta = len(diffs), sum(diffs) / len(diffs)
    what, words = f"the recorded model ({name.split(':', 1)[1]})", metric.replace("_", " ")
    interval = f"95% interval {low * 100:+.0f} to {high * 100:+.0f} points over {rows} rows"
    margin = f"{options.match_margin * 100:.0f} points"
    if low > 0:
        outcome, text = "better", f"The tuned model ({tuned}) beat {what} by {delta * 100:.0f} points of {words}"
    elif high < 0:
        outcome, text = "worse", (f"The tuned model ({tuned}) did NOT match {what}: it scores {-delta * 100:.0f} "
                                  f"points of {words} lower")
    elif low >= -options.match_margin:
        outcome, text = "matches", (f"The tuned model ({tuned}) matches {what} within the interval: they differ by "
                                    f"{delta * 100:+.0f} points of {words}, and the interval rules out a loss of more "
                                    f"than {margin}")
    else:
        outcome, text = "unclear", (f"Could not tell whether the tuned model ({tuned}) matches {what}: they differ "
                                    f"by {delta * 100:+.0f} points of {words}, and the interval includes zero and "
                                    f"losses of more than {margin}")
    return {"system": name, "text": f"{text} ({interval}).", "outcome": outcome, "tuned": tuned,
            "difference": round(delta, 6), "interval95": [round(low, 6), round(high, 6)], "rows": rows}


def _gguf_warnings(results: dict, metric: str, options) -> list[str]:
    if "merged" not in results:
        return []
    return [f"{name} scores {(results['merged'][metric] - results[name][metric]) * 100:.0f} points of {metric} below "
            f"the merged model (more than {options.gguf_drop * 100:.0f}): try a larger quantization type"
            for name in results if name.startswith("gguf:")
            and results["merged"][metric] - results[name][metric] > options.gguf_drop]


def _against_fewshot(results: dict, tuned: str, metric: str, outcome: str, seed: int) -> str:
    """What the tuned system's shorter prompt is worth against few-shot prompting. Saved tokens mean something only
    where the tuned system is at least as good as few-shot (the 95% interval of tuned - fewshot does not reach below
    zero) and learned something (it beat base zero-shot, whose prompt is as short): a model that learned nothing
    "saves" tokens only by answering as badly without the examples. Otherwise few-shot prompting is as good or
    better, and its cost is said instead; where few-shot is clearly worse but base is not, the verdict says it all."""
    extra = results["fewshot"]["prompt_tokens_per_request"] - results[tuned]["prompt_tokens_per_request"]
    low = _interval(results, tuned, "fewshot", metric, seed)[0]
    learned = _interval(results, tuned, "base", metric, seed)[0] > 0 if "base" in results else outcome == "better"
    if low >= 0 and learned:
        return f"; it saves {extra:.0f} prompt tokens per request against few-shot prompting"
    if low <= 0:
        return f"; few-shot prompting is as good or better, at {extra:.0f} more prompt tokens per request"
    return ""


def _interval(results: dict, tuned: str, other: str, metric: str, seed: int) -> tuple[float, float]:
    """95% paired bootstrap interval of tuned - other on `metric`, row by row."""
    diffs = [t["scores"][metric] - o["scores"][metric] for t, o in zip(results[tuned]["rows"], results[other]["rows"])]
    return bootstrap_interval(diffs, seed=seed)


def _label(name: str) -> str:
    return {"base": "the base model (zero-shot)", "fewshot": "few-shot prompting"}.get(name, name)


def _markdown(report: dict) -> str:
    metrics = [*METRICS, *(["custom"] if report.get("scorer") else []),
               *(["reward", *(f"reward/{g['name']}" for g in report["graders"])] if report.get("graders") else []),
               *(["tool_call_exact"] if report.get("tool_calls") else [])]
    lines = [f"# Did fine-tuning help? ({Path(report['run']).name})", "", f"**{report['verdict']['text']}**", "",
             f"{report['rows']} held-out rows from {report['rows_from']}; greedy decoding, at most "
             f"{report['max_new_tokens']} new tokens; primary metric: {report['metric']}.", "",
             "| system | " + " | ".join(metrics) + " | loss | ppl | prompt tok/req | gen tok/s |",
             "|---" * (len(metrics) + 5) + "|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[m]:.3f}" for m in metrics) + " | " + " | ".join(
            _cell(r[k], spec) for k, spec in (("loss", ".4f"), ("perplexity", ".2f"),
                                              ("prompt_tokens_per_request", ".1f"), ("generated_tokens_per_s", ".1f")))
            + " |")
    if report.get("tool_calls"):
        lines += ["", "Tool calls (exact: the name and the arguments as JSON equal):", "",
                  "| system | calls expected | predicted | exact | precision | recall | name accuracy |",
                  "|---" * 7 + "|"]
        lines += [f"| {name} | {t['expected']} | {t['predicted']} | {t['exact']} | " + " | ".join(
            _cell(t[k], ".3f") for k in ("precision", "recall", "name_accuracy")) + " |"
            for name, r in report["results"].items() if (t := r.get("tool_calls"))]
    if "preference" in report:
        from qlora_kit.eval.preference_report import markdown

        lines += markdown(report)
    for name, rec in report.get("recorded", {}).items():
        lines += ["", f"{name}: answers recorded from another model, scored as given ({rec['rows_scored']} rows; "
                      f"{rec['prompts_not_scored']} prompt(s) of the file are not among them). It has no logits "
                      "(no loss or perplexity) and no prompt-token figure: its prompts were never tokenized here, "
                      "and its tokenizer is not the run's."]
    if report["warnings"]:
        lines += ["", "Warnings:", *[f"- {w}" for w in report["warnings"]]]
    return "\n".join(lines) + "\n"


def _cell(value, spec: str) -> str:
    """A table number; n/a for what a system does not have (a recorded answer has no loss, no timing)."""
    return "n/a" if value is None else f"{value:{spec}}"


def _charts(out: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(METRICS)
    for i, m in enumerate(METRICS):
        ax.bar([x + i * width for x in range(len(names))], [report["results"][n][m] for n in names], width, label=m)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (held-out mean)")
    ax.set_title("Scores by system")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=100)
    plt.close(fig)
    chain = [n for n in names if n in ("adapter", "merged") or n.startswith("gguf:")]
    if chain:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(chain, [report["results"][n][report["metric"]] for n in chain], marker="o")
        ax.set_ylabel(report["metric"])
        ax.set_title("What merging and quantization keep")
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=100)
        plt.close(fig)
