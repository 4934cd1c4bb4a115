"""What the OpenAI routes share: cursor pagination (OpenAI's `after`/`limit`/`has_more`), atomic JSON records under
the server's state directory, and short ids."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Callable

from qlora_kit.server.openai.errors import bad_request, not_found
from qlora_kit.server.store import STATE_DIR, _atomic_write

MAX_PAGE = 100


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def state_dir(root: Path, name: str) -> Path:
    path = Path(root) / STATE_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: dict) -> None:
    _atomic_write(path, json.dumps(data, indent=1))


def read_records(directory: Path, suffix: str = ".json") -> list[dict]:
    out = []
    for path in sorted(Path(directory).glob(f"*{suffix}")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # written atomically, so only foreign junk lands here
    return out


def page(items: list[dict], after: str | None, limit: int | None, what: str,
         key: Callable[[dict], Any] = lambda item: item["id"]) -> dict:
    """OpenAI's cursor page over `items` (already in the order to list): those after the one whose id is `after`."""
    limit = 20 if limit is None else limit
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"limit: {limit}: must be between 1 and {MAX_PAGE}", "limit")
    start = 0
    if after:
        ids = [key(item) for item in items]
        if after not in ids:
            raise not_found(what, after, "after")
        start = ids.index(after) + 1
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}
