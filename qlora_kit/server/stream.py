"""Server-sent events from RUN_DIR/events.jsonl.

Each event goes out as `id: SEQ`, `event: KIND`, `data: JSON` (the event's own JSON line, unchanged). A client that
reconnects sends `Last-Event-ID: n` and gets n+1, n+2, ... from the file, so nothing is missed or repeated, also
across a server restart (the file, not the server's memory, is the source). Comment lines (`: heartbeat`) keep
idle connections open through proxies. The stream ends once the job is no longer queued or running and the file
has been read to its end.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import AsyncIterator, Callable

POLL_S = 0.05  # how often the file is checked for new lines: the floor of step-to-client latency
HEARTBEAT_S = 15.0


def format_event(seq: int, kind: str, line: str) -> str:
    return f"id: {seq}\nevent: {kind}\ndata: {line}\n\n"


async def event_stream(path: Path, after: int, active: Callable[[], bool], poll_s: float = POLL_S,
                       heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[str]:
    offset, pending, last = 0, b"", after
    beat = time.monotonic()
    yield "retry: 1000\n\n"
    while True:
        still_active = active()  # asked before reading, so the final read sees everything the run wrote
        chunk, offset = _read_from(path, offset)
        pending += chunk
        *lines, pending = pending.split(b"\n")  # the last piece is a line still being written
        for raw in lines:
            event = _parse(raw)
            if event is not None and event[0] > last:
                last = event[0]
                beat = time.monotonic()
                yield format_event(event[0], event[1], raw.decode("utf-8"))
        if not still_active and not chunk:
            return
        if time.monotonic() - beat >= heartbeat_s:
            beat = time.monotonic()
            yield ": heartbeat\n\n"
        await asyncio.sleep(poll_s)


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            if size < offset:  # the run dir was replaced (overwrite): read the new file from its start
                offset = 0
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return b"", offset
    return data, offset + len(data)


def _parse(raw: bytes) -> tuple[int, str] | None:
    try:
        event = json.loads(raw)
        return int(event["seq"]), str(event["event"])
    except (ValueError, KeyError, TypeError):
        return None  # blank or foreign lines (an older schema without seq) are not streamed
