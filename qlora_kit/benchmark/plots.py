"""PNG plots of a bench report: tokens/s and peak memory against sequence length, one line per backend (and method
and batch size), out-of-memory or failed cells marked with an x on the axis. Planner predictions are dashed; on CPU
the measured tensor peak they are compared with is dotted (RSS also counts the libraries)."""

from __future__ import annotations

from pathlib import Path

MIB = 2**20


def write_plots(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    cells = report["cells"]
    series = sorted({(c.get("method", "sft"), c["backend"], c["batch_size"]) for c in cells})
    memory_label = ("peak allocated (MiB)" if report["machine"]["device"] == "cuda" else "peak RSS (MiB)")
    written = []
    for name, key, ylabel, predicted in (
        ("tokens_per_s.png", "tokens_per_second", "tokens/s (steady state)", None),
        ("peak_memory.png", "peak_bytes", memory_label, "predicted_peak_bytes"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for index, (method, backend, batch) in enumerate(series):
            color = f"C{index}"
            mine = sorted((c for c in cells if (c.get("method", "sft"), c["backend"], c["batch_size"]) ==
                           (method, backend, batch)), key=lambda c: c["seq_len"])
            label = _label(series, method, backend, batch)
            ok = [c for c in mine if c["status"] == "ok"]
            scale = MIB if key == "peak_bytes" else 1
            ax.plot([c["seq_len"] for c in ok], [c[key] / scale for c in ok], "o-", color=color, label=label)
            if predicted and report["machine"]["device"] == "cpu":  # the planner predicts tensors, not RSS
                ax.plot([c["seq_len"] for c in ok], [c["peak_tensor_bytes"] / MIB for c in ok], ":", color=color,
                        label=f"{label}, tensor peak")
            if predicted:
                ax.plot([c["seq_len"] for c in mine], [c[predicted] / MIB for c in mine], "--", color=color,
                        alpha=0.6, label=f"{label}, planner")
            failed = [c for c in mine if c["status"] != "ok"]
            if failed:
                ax.plot([c["seq_len"] for c in failed], [0] * len(failed), "x", color=color, markersize=12,
                        markeredgewidth=2.5, clip_on=False, label=f"{label}: OOM/failed")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{_model_label(report['model'])} on {report['machine'].get('gpu') or report['machine']['cpu']}",
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(name)
    return written


def _label(series: list[tuple], method: str, backend: str, batch: int) -> str:
    """The line's name: the backend, with the method and the batch size where the sweep has several."""
    label = backend if len({m for m, _, _ in series}) == 1 else f"{method} {backend}"
    return f"{label} (batch {batch})" if len({b for _, _, b in series}) > 1 else label


def _model_label(name: str) -> str:
    """A local model directory by its own name (temporary parent directories say nothing); Hub ids as they are."""
    return Path(name).name if name.startswith(("/", ".", "~")) else name
