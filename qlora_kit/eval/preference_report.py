"""The preference verdict, its part of report.md, and preference.jsonl (every pair's scores by every system).

The verdict compares the tuned system (adapter, else merged, else the first GGUF) with the model training measured
itself against: `reference` (the starting adapter of an "SFT then DPO" run) when it was scored, else `base`. The
primary number is preference accuracy, pair by pair (1 when a system's margin is above zero), with the same 95%
paired bootstrap interval and the same three outcomes as the SFT verdict: "beat" only when the interval is above
zero, "did NOT help" when it is below, otherwise "did not clearly help". The mean margin and the interval of its
change follow (accuracy saturates; the margin shows how far the preference moved), then how much of the accuracy
gain each GGUF keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlora_kit.eval.scoring import bootstrap_interval

LABELS = {"base": "the base model", "reference": "the reference model (the starting adapter)"}


def _pairs(result: dict) -> list[dict]:
    return result["preference_rows"]["pairs"]


def _scored(results: dict) -> list[str]:
    return [n for n, r in results.items() if r.get("preference_accuracy") is not None]


def judge_preference(results: dict, method: str, options) -> tuple[dict, list[str]]:
    """(verdict, warnings) on the systems' preference scores (module docstring)."""
    scored = _scored(results)
    tuned = next((n for n in ("adapter", "merged") if n in scored), None) or \
        next((n for n in scored if n.startswith("gguf:")), None)
    baseline = next((n for n in ("reference", "base") if n in scored), None)
    if tuned is None or baseline is None:
        why = "no held-out pairs (the unpaired rows' gap is reported per system)" if not scored else \
            "compare a tuned system (adapter, merged or gguf:TYPE) with base or reference"
        return {"text": f"no preference verdict: {why}.", "outcome": "none", "metric": "preference_accuracy"}, []
    t_rows, b_rows = _pairs(results[tuned]), _pairs(results[baseline])
    diffs = [float(t["margin"] > 0) - float(b["margin"] > 0) for t, b in zip(t_rows, b_rows)]
    delta, (low, high) = sum(diffs) / len(diffs), bootstrap_interval(diffs, seed=options.seed)
    shift = [t["margin"] - b["margin"] for t, b in zip(t_rows, b_rows)]
    m_low, m_high = bootstrap_interval(shift, seed=options.seed)
    outcome, text = _sentence(method, tuned, baseline, delta, low, high, len(diffs))
    text += (f"; the mean margin (log p chosen - log p rejected) went from {results[baseline]['mean_margin']:+.2f} "
             f"to {results[tuned]['mean_margin']:+.2f} nats (95% interval of the change {m_low:+.2f} to "
             f"{m_high:+.2f})")
    text += _keeps(results, baseline, tuned) + "."
    return {"text": text, "outcome": outcome, "tuned": tuned, "baseline": baseline, "metric": "preference_accuracy",
            "difference": round(delta, 6), "interval95": [round(low, 6), round(high, 6)], "rows": len(diffs),
            "margin_difference": round(sum(shift) / len(shift), 6),
            "margin_interval95": [round(m_low, 6), round(m_high, 6)]}, _gguf_warnings(results, options)


def _sentence(method: str, tuned: str, baseline: str, delta: float, low: float, high: float, n: int):
    label, who = LABELS[baseline], f"Preference tuning ({method})"
    points = f"{abs(delta) * 100:.0f} points of preference accuracy"
    interval = f"95% interval {low * 100:+.0f} to {high * 100:+.0f} points over {n} pairs"
    if low > 0:
        return "better", f"{who} beat {label} by {points} ({interval})"
    if high < 0:
        return "worse", f"{who} did NOT help: {label} prefers the chosen answers more often, by {points} ({interval})"
    return "unclear", (f"{who} did not clearly help: {tuned} vs {label} differ by {delta * 100:+.0f} points of "
                       f"preference accuracy, and the {interval} includes zero")


def _keeps(results: dict, baseline: str, tuned: str) -> str:
    start = results[baseline]["preference_accuracy"]
    gain = results[tuned]["preference_accuracy"] - start
    keeps = [f"{n.split(':')[1].upper()} keeps {(results[n]['preference_accuracy'] - start) / gain:.0%} of the gain"
             for n in _scored(results) if n.startswith("gguf:") and gain > 0]
    return "; " + ", ".join(keeps) if keeps else ""


def _gguf_warnings(results: dict, options) -> list[str]:
    if results.get("merged", {}).get("preference_accuracy") is None:
        return []
    merged = results["merged"]["preference_accuracy"]
    return [f"{n} scores {(merged - results[n]['preference_accuracy']) * 100:.0f} points of preference_accuracy "
            f"below the merged model (more than {options.gguf_drop * 100:.0f}): try a larger quantization type"
            for n in _scored(results) if n.startswith("gguf:")
            and merged - results[n]["preference_accuracy"] > options.gguf_drop]


def combine(preference: dict, generation: dict) -> dict:
    """The report's verdict: the preference one, with the generations' verdict (vs the chosen answers) after it."""
    text = generation["text"]
    if text:
        text = f"On generations scored against the chosen answers, {text[0].lower()}{text[1:]}"
    return {**preference, "text": " ".join(t for t in (preference["text"], text) if t), "generation": generation}


def write_pairs(out: Path, pset, results: dict) -> None:
    """preference.jsonl: one line per held-out pair or unpaired row, with every scored system's numbers."""
    scored = [n for n, r in results.items() if "preference_rows" in r]
    with open(out / "preference.jsonl", "w", encoding="utf-8") as fh:
        for kind, rows in (("pairs", pset.pairs), ("unpaired", pset.unpaired)):
            for i, row in enumerate(rows):
                line = {"where": row.where, "kind": "pair" if kind == "pairs" else "unpaired",
                        **({"label": row.label} if kind == "unpaired" else {}),
                        "systems": {n: results[n]["preference_rows"][kind][i] for n in scored}}
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")


def markdown(report: dict) -> list[str]:
    """report.md's preference section."""
    pref = report["preference"]
    lines = ["", f"## Preferences ({report['method']})", "",
             f"{pref['pairs']} held-out pairs ({pref['pairs_from_unpaired_rows']} of them from unpaired rows with the "
             f"same prompt) and {pref['unpaired_rows']} unpaired rows from {pref['rows_from']}; {pref['score']}.", "",
             "| system | preference accuracy | mean margin | log p chosen | log p rejected | desirable/tok | "
             "undesirable/tok |", "|---" * 7 + "|"]
    keys = ("preference_accuracy", "mean_margin", "mean_logp_chosen", "mean_logp_rejected",
            "desirable_logp_per_token", "undesirable_logp_per_token")
    for name, r in report["results"].items():
        if r.get("preference_not_scored"):
            continue
        lines.append(f"| {name} | " + " | ".join("n/a" if r[k] is None else f"{r[k]:.3f}" for k in keys) + " |")
    for name, r in report["results"].items():
        if r.get("preference_not_scored"):
            lines.append(f"\n{name}: not scored on preferences: {r['preference_not_scored']}.")
    return lines
