"""Whether a Hub id can be had at all: from the local cache, or over the network (one short try, no retries).

Why: a file that is not cached makes huggingface_hub retry five times with back-off when the network is down
(~26 s of "Retrying in 8s" lines) before transformers or datasets wrap the failure in their own error. A recipe
naming a Hub id that is neither cached nor reachable is refused here instead, at once and in one line:
`require` looks in the local cache first (no network), and only for an id that is not there sends one HEAD
request to the Hub endpoint (HF_ENDPOINT), with a short timeout. Any HTTP answer means the Hub is reachable and
the libraries take over as before (a gated or unknown repo keeps their message). An id found either way is
remembered for the rest of the process.
"""

from __future__ import annotations

import os
from pathlib import Path

from qlora_kit.errors import DataError, UsageError, first_line

PROBE_TIMEOUT_S = 5.0  # seconds for the one probe; HF_HUB_ETAG_TIMEOUT, when set, wins
_AVAILABLE: set[tuple[str, str]] = set()  # (repo_type, repo_id) found cached or reachable in this process


def require(repo_id: str, field: str, repo_type: str = "model", what: str | None = None) -> None:
    """Return if `repo_id` is in the local cache or the Hub answers; else raise one line (exit 2) saying which.

    `field` names the recipe field in the message; `what` how it names what could not be fetched (default: the
    id; for the planner "config.json of ID", for a dataset "'ID' split 'train'")."""
    key = (repo_type, repo_id)
    if key in _AVAILABLE:
        return
    if in_local_cache(repo_id, repo_type):
        _AVAILABLE.add(key)
        return
    why = unreachable()
    if why is None:
        _AVAILABLE.add(key)
        return
    raise (DataError if repo_type == "dataset" else UsageError)(_message(repo_id, field, repo_type, what, why))


def in_local_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Any snapshot of the repo in huggingface_hub's cache (for a model: one holding config.json); for a dataset
    also the Arrow files `datasets` prepared from it earlier. No network."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "snapshots"
    found = [s for s in snapshots.iterdir() if s.is_dir()] if snapshots.is_dir() else []
    if repo_type == "model":
        return any((s / "config.json").exists() for s in found)
    return bool(found) or _in_datasets_cache(repo_id)


def _in_datasets_cache(repo_id: str) -> bool:
    """`datasets` keeps what it prepared under HF_DATASETS_CACHE/NAMESPACE___NAME (the name in snake_case) and
    loads it from there when the Hub cannot be reached."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    return (Path(config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)).is_dir()


def unreachable() -> str | None:
    """None when the Hub endpoint answers (any HTTP status); otherwise why not, in a few words."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "offline"
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or PROBE_TIMEOUT_S)
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except httpx.TransportError as exc:  # DNS, refused, timeout, proxy, TLS: nothing answered
        return f"{constants.ENDPOINT}: {first_line(exc, type(exc).__name__)}"
    except Exception:  # noqa: BLE001  not a network failure: the libraries report whatever it is
        return None
    return None


def _message(repo_id: str, field: str, repo_type: str, what: str | None, why: str) -> str:
    from huggingface_hub import constants

    if why == "offline":
        reason, fix = "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download it"
    else:
        reason, fix = f"the network is unreachable: {why}", "connect to the network once to download it"
    if Path(repo_id).parent.is_dir():  # `models/my-run` where ./models exists: probably meant as a local path
        reason += f"; nor is it a directory here (relative paths are read from the current directory, {Path.cwd()})"
    detail = f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}), and {reason}"
    if repo_type == "dataset":  # the form of data/sources.py's other "cannot load Hub dataset" errors
        return f"{field}: cannot load Hub dataset {what or repr(repo_id)}: {detail}; {fix}, or point {field} at a " \
               "local data file"
    return f"{field}: could not fetch {what or repo_id} from the Hub ({detail}); {fix}, or point {field} at a local " \
           "model directory"
