"""`qlora-kit events-schema`: the JSON Schema of the events (events.jsonl, --events, hooks, jobs)."""

from __future__ import annotations


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "events-schema", parents=[common], help="print the JSON Schema of run events",
        description="Print the JSON Schema (draft 2020-12) that every event in events.jsonl, `--events` output, "
                    "hook calls and qk.Job.events() follows. It is generated from qlora_kit/events.py.")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from qlora_kit.events import events_schema

    print(json.dumps(events_schema(), indent=2))
    return 0
