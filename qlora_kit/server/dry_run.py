"""Dry-run commands (`plan`, `data check`) for the HTTP API, each through the CLI in a child process: they may
load a tokenizer or torch, which the server never imports."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from qlora_kit.process import Child
from qlora_kit.server.recipes import write_temp_recipe

DRY_RUN_TIMEOUT_S = 600


def dry_run(command: list[str], recipe, flags: list[str], cwd: Path) -> dict[str, Any]:
    """A dry-run command through the CLI in a child process (it may load a tokenizer or torch, which the server
    never imports): its --json output, or its one-line error as a 422."""
    with tempfile.TemporaryDirectory(prefix="qlora-kit-server-") as tmp:
        path = write_temp_recipe(recipe, Path(tmp))
        child = Child([*command, str(path), *flags], watch_crash=False, cwd=cwd, stdin=subprocess.DEVNULL,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = child.communicate(timeout=DRY_RUN_TIMEOUT_S)
    code = child.returncode
    report = None
    try:
        report = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        pass
    if code == 0 and report is not None:
        return report
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    problems = [line.strip()[2:] for line in lines if line.startswith("  - ")]
    message = next((line.split("error: ", 1)[1] for line in lines if line.startswith("qlora-kit: error: ")),
                   lines[-1] if lines else f"exit code {code}")
    status = 422 if code == 2 else 500
    raise HTTPException(status, {"message": message, "problems": problems or [message], "report": report})
