"""report.md: the bench report as tables a person reads (report.json holds the same and more)."""

from __future__ import annotations

MIB = 2**20


def _mib(value) -> str:
    return f"{value / MIB:,.1f}" if value else "-"


def _num(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def render_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    device = f"{m['gpu']} ({m['gpu_memory_bytes'] / 2**30:.0f} GiB), " if m.get("gpu") else ""
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    lines = [
        "# qlora-kit bench", "",
        f"- Command: `{report['command']}`",
        f"- Model: `{report['model']}` ({report['model_shape']['model_type']}, "
        f"{report['model_shape']['params']:,} parameters)",
        f"- Machine: {device}{m['cpu']} ({m.get('cpu_model', '?')}; {_features(m)}), {m['cpu_count']} CPUs, "
        f"{(m['ram_bytes'] or 0) / 2**30:.0f} GiB RAM; device `{m['device']}`",
        f"- Versions: python {m['python']}, qlora-kit {m['qlora_kit']}, {versions}",
        f"- Each cell: {_runs(s['repeats'])}, {s['steps']} steps on {s['data']} rows of exactly seq_len tokens, "
        f"the first {s['warmup']} excluded from tokens/s" + (", the last profiled for tensor memory and excluded"
                                                             if m["device"] == "cpu" else ""),
        f"- Created {report['created']}", "",
        "## Results", "",
    ]
    cpu = m["device"] == "cpu"
    methods = list(dict.fromkeys(c.get("method", "sft") for c in report["cells"]))
    for method in methods:
        if methods != ["sft"]:
            lines += [f"### {method}", ""]
        lines += _results_table([c for c in report["cells"] if c.get("method", "sft") == method], cpu) + [""]
        if method == "grpo":
            lines += _grpo_table([c for c in report["cells"] if c.get("method") == "grpo"]) + [""]
    lines.pop()
    failed = [c for c in report["cells"] if c["status"] != "ok"]
    if failed:
        lines += ["", "Cells that did not finish:", ""]
        lines += [f"- {_method(c)}{c['backend']} seq {c['seq_len']} batch {c['batch_size']}: {c['status']}: "
                  f"{c.get('error', '')} (log: `{c['log']}`)" for c in failed]
    compared = [c for c in report["cells"] if "speed_ratio_vs_sft" in c]
    if compared:
        lines += ["", "## Preference methods vs sft", ""] + _method_table(compared, cpu)
    lines += ["", "## Targets", ""] + _targets(report)
    lines += ["", "## How to read this", "",
              f"- Memory: {report['memory_measures']['cuda' if not cpu else 'cpu']}. The planner's prediction is "
              "compared with " + ("the peak live tensor bytes" if cpu else "max_memory_allocated") + ".",
              f"- MFU (GPU only): {report['mfu_formula']}",
              "- x hf: this backend's number divided by the hf baseline's in the same sweep, same seed and rows; "
              "Δ loss: final-step loss minus the baseline's.", ""]
    if methods != ["sft"]:
        lines.insert(-1, "- Preference methods: a row is a pair, two sequences of seq_len tokens (the prompt a quarter "
                     "of each on synthetic rows); tokens/s counts both. dpo also runs the reference forward (adapter "
                     "disabled) of both; x sft divides by the sft cell of the same backend and size.")
    if "grpo" in methods:
        lines.insert(-1, "- grpo: tokens/s counts the tokens each step trained (prompt + completion of every sequence) "
                     "over the whole step, sampling included; generated tok/s counts the completion tokens over the "
                     "seconds spent in `generate` alone. The planner's phases are each one's bytes above the held "
                     "terms; the step peaks in the largest.")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def _results_table(cells: list[dict], cpu: bool) -> list[str]:
    head = ["backend", "seq", "batch", "status", "tokens/s", "x hf", "first step s",
            "peak RSS MiB" if cpu else "peak alloc MiB", "x hf"]
    head += ["tensor peak MiB", "x hf"] if cpu else ["reserved MiB", "MFU"]
    head += ["predicted MiB", "error", "final loss", "Δ loss vs hf"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        ok = c["status"] == "ok"
        row = [c["backend"], str(c["seq_len"]), str(c["batch_size"]), c["status"] if ok else f"**{c['status']}**",
               _tokens(c), _num(c.get("speed_ratio_vs_hf"), ".2f"),
               _num(c.get("time_to_first_step_seconds"), ".1f"), _mib(c.get("peak_bytes")),
               _num(c.get("memory_ratio_vs_hf"), ".3f")]
        if cpu:
            row += [_mib(c.get("peak_tensor_bytes")), _num(c.get("tensor_ratio_vs_hf"), ".3f")]
        else:
            row += [_mib(c.get("peak_reserved_bytes")), _num(c.get("mfu"), ".1%")]
        row += [_mib(c.get("predicted_peak_bytes")), _num(c.get("prediction_error"), "+.1%"),
                _num(c.get("final_loss"), ".4f"), _num(c.get("final_loss_diff_vs_hf"), "+.2e")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _grpo_table(cells: list[dict]) -> list[str]:
    """GRPO cells' sampling figures and the planner's phases."""
    lines = ["| backend | seq | batch | prompt + completion | generated tok/s | generate s / step s | planner phases "
             "MiB |", "|" + "---|" * 7]
    for c in cells:
        if c["status"] != "ok":
            continue
        gen, steps = sum(c.get("generation_seconds") or []), sum(c.get("step_seconds") or [])
        phases = ", ".join(f"{k.replace('_', ' ')} {v / MIB:,.1f}" for k, v in c.get("predicted_phases", {}).items())
        lines.append(f"| {c['backend']} | {c['seq_len']} | {c['batch_size']} | {c.get('prompt_tokens')} + "
                     f"{c.get('completion_tokens')} | {_num(c.get('generated_tokens_per_second'), ',.0f')} | "
                     f"{_num(gen / steps if steps else None, '.0%')} | {phases or '-'} |")
    return lines


def _method_table(cells: list[dict], cpu: bool) -> list[str]:
    """Each preference cell against the sft cell of the same backend and size (a pair is two sequences, so a row
    of it runs twice the tokens of an SFT row: tokens/s and rows/s both shown)."""
    head = ["method", "backend", "seq", "batch", "tokens/s x sft", "rows/s x sft"]
    head += ["peak RSS x sft", "tensor peak x sft"] if cpu else ["peak alloc x sft"]
    lines = ["| " + " | ".join(head + ["planner x sft"]) + " |", "|" + "---|" * (len(head) + 1)]
    for c in cells:
        row = [c["method"], c["backend"], str(c["seq_len"]), str(c["batch_size"]),
               _num(c.get("speed_ratio_vs_sft"), ".2f"), _num(c.get("rows_ratio_vs_sft"), ".2f"),
               _num(c.get("memory_ratio_vs_sft"), ".2f")]
        row += [_num(c.get("tensor_ratio_vs_sft"), ".2f")] if cpu else []
        lines.append("| " + " | ".join(row + [_num(c.get("predicted_ratio_vs_sft"), ".2f")]) + " |")
    return lines


def _method(cell: dict) -> str:
    return "" if cell.get("method", "sft") == "sft" else cell["method"] + " "


def _runs(repeats: int) -> str:
    if repeats == 1:
        return "a fresh process"
    return (f"{repeats} runs, each a fresh process, backends interleaved; shown: the median run by tokens/s (with "
            "the range over the runs) and the median of each peak-memory figure")


def _tokens(cell: dict) -> str:
    """tokens/s, and with repeats the range over the runs: the median run's value (min-max)."""
    text = _num(cell.get("tokens_per_second"), ",.0f")
    rates = [r["tokens_per_second"] for r in cell.get("runs", []) if r.get("tokens_per_second")]
    if len(rates) > 1:
        text += f" ({min(rates):,.0f}-{max(rates):,.0f})"
    return text


def _targets(report: dict) -> list[str]:
    if not report["targets"]:
        return ["No cell is comparable with a target (it needs an hf baseline cell of the same size"
                + (" and seq >= 2048 on CUDA" if report["machine"]["device"] == "cuda" else "") + ")."]
    lines = []
    for t in report["targets"]:
        speed = "met" if t["speed_met"] else f"missed by {t['speed_target'] - t['speed_ratio']:.2f}"
        memory = "met" if t["memory_met"] else f"missed by {t['memory_ratio'] - t['memory_target']:.3f}"
        lines.append(f"- {t['backend']} seq {t['seq_len']} batch {t['batch_size']}: speed {t['speed_ratio']:.2f}x "
                     f"(target >= {t['speed_target']}x: {speed}); memory {t['memory_ratio']:.3f}x "
                     f"(target <= {t['memory_target']}x: {memory})")
    return lines


def _features(machine: dict) -> str:
    return ", ".join(machine.get("cpu_features") or []) or "no AVX2 or AVX-512"
