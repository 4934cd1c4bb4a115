"""A host program driving qlora-kit as its training backend (what a UI, agent or scheduler does).

    python examples/host.py RECIPE [--cancel-at STEP] [--name NAME]

It starts the run in a child process (`qk.start`: Unsloth and torch are never imported here), under a name of its
own (--name, default host-demo: output.dir/host-demo, replaced at each start), so it never overwrites the run the
recipe itself makes (runs/tiny-demo, what `make demo` leaves to look at). It renders progress from the event
stream, cancels at --cancel-at (the child saves a checkpoint and stops), resumes, and prints the artifacts with
their sizes and checksums. The last line is a JSON summary (tests read it).
"""

from __future__ import annotations

import argparse
import json
import sys

import qlora_kit as qk

HOST_RUN = "host-demo"  # overwritten at each start (overwrite=True below): a name of its own, never the recipe's


def follow(job: qk.Job, cancel_at: int | None) -> None:
    for event in job.events():
        if event.event == "step":
            eta = f", eta {event.eta_s:.0f} s" if event.eta_s is not None else ""
            print(f"  step {event.step}/{event.max_steps}  loss {event.loss:.4f}{eta}", flush=True)
            if cancel_at is not None and event.step >= cancel_at:
                print(f"  cancelling at step {event.step}", flush=True)
                job.cancel()
                cancel_at = None
        elif event.event == "stage" and event.status != "start":
            print(f"  {event.name}: {event.status}", flush=True)
        elif event.event in ("cancelled", "warning", "error"):
            print(f"  {event.event}: {event.model_dump(exclude={'v', 'run_id', 't'})}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--cancel-at", type=int, default=None)
    parser.add_argument("--name", default=HOST_RUN, help=f"the run's output.name (default: {HOST_RUN})")
    args = parser.parse_args(argv)
    recipe = qk.load_recipe(args.recipe, {"output.name": args.name})

    print(f"starting {recipe.output.name}", flush=True)
    job = qk.start(recipe, overwrite=True)
    follow(job, args.cancel_at)
    first = job.wait()
    print(f"first session: {first.status} at step {first.step} (exit code {first.exit_code})", flush=True)
    results = [first]
    if first.status == "cancelled":
        job = qk.start(recipe, resume=True)
        follow(job, None)
        results.append(job.wait())
        print(f"resumed: {results[-1].status} at step {results[-1].step}", flush=True)
    for artifact in results[-1].artifacts:
        print(f"  {artifact.kind:<14} {artifact.bytes:>12,} B  {artifact.sha256[:16]}  {artifact.path}", flush=True)
    heavy = sorted(m for m in ("torch", "transformers", "unsloth") if m in sys.modules)
    print(json.dumps({"statuses": [r.status for r in results], "steps": [r.step for r in results],
                      "exit_codes": [r.exit_code for r in results], "run_dir": results[-1].run_dir,
                      "artifacts": [a.model_dump() for a in results[-1].artifacts], "heavy_modules": heavy}))
    return 0 if results[-1].status == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
