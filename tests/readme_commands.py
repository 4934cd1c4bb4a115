"""The README's commands, as tests/test_readme.py runs them.

Every ```bash block in README.md is preceded by a marker saying how the test treats it:

    <!-- test: run -->          run as written, in a scratch directory
    <!-- test: tiny -->         run as written in a scratch directory whose recipes/NAME.yaml is the shipped recipe
                                with the tiny built-in model in place of the real one (and a few training steps)
    <!-- test: make-target --> each line is `make TARGET`: the Makefile must have the target (make test would
                                otherwise run the suite inside itself)
    <!-- test: skip (REASON) --> not run; the test prints the reason (and checks what it can instead)

A block without a marker fails the test, so a new command cannot slip in untested.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

MARKER = re.compile(r"<!--\s*test:\s*(run|tiny|make-target|skip)\s*(?:\((.*)\))?\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
CLI = re.compile(r"^(?:\.venv/bin/)?qlora-kit\s")
# What the tiny stand-in for a real model trains: enough steps that it answers in words, few enough to be quick.
TINY_STEPS = 40


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    mode: str | None  # run, tiny, make-target, skip; None when unmarked
    reason: str = ""

    @property
    def commands(self) -> list[str]:
        """One shell command per entry: continuation lines joined, comment-only and blank lines dropped."""
        joined = self.code.replace("\\\n", " ")
        return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]

    @property
    def label(self) -> str:
        first = self.commands[0] if self.commands else ""
        return f"line {self.line}: {first[:60]}"


def blocks(text: str) -> list[Block]:
    """Every fenced block, with the test marker of the nearest preceding HTML comment (blank lines allowed)."""
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.search(lines[k]) if k >= 0 else None
        out.append(Block(opening.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1,
                         marker.group(1) if marker else None, (marker.group(2) or "").strip() if marker else ""))
        i = end + 1
    return out


def cli_commands(text: str) -> list[tuple[list[str], str]]:
    """(argv after `qlora-kit`, where) for every qlora-kit command in the text's ```bash blocks (full commands)."""
    found = []
    for block in blocks(text):
        if block.lang not in ("bash", "sh", "shell"):
            continue
        for command in block.commands:
            for part in re.split(r"\s*(?:&&|;|\|\|?)\s*", command):
                if CLI.match(part):
                    found.append((shlex.split(part, comments=True)[1:], f"line {block.line}: {part}"))
    return found


def inline_cli_mentions(text: str) -> list[tuple[list[str], str]]:
    """(argv, span) for inline `qlora-kit ...` code spans outside fenced blocks; these may be partial (no
    positional arguments), so only the subcommand and its flags are checked. Spans with alternatives (`a|b`) or
    elisions (`...`) are left out."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`]+)`", prose)
    out = []
    for span in spans:
        span = " ".join(span.split())
        if CLI.match(span + " ") and "|" not in span and "..." not in span and "[" not in span:
            out.append((shlex.split(span)[1:], span))
    return out


def tiny_recipe(shipped: Path) -> dict:
    """The shipped recipe with the tiny built-in model in place of its real one: every stage section (merge,
    export, eval) is kept as the recipe has it, with smaller samples so the test stays quick."""
    recipe = yaml.safe_load(shipped.read_text())
    recipe["model"] = {**recipe["model"], "name": "builtin:tiny-llama", "max_seq_length": 128}
    data = recipe["data"]
    data["chat_template"] = "chatml"  # the tiny tokenizer has no template of its own
    if data.get("eval_split"):
        # Two held-out rows of the test's 155 (1% would be one): `qlora-kit eval RUN` answers every held-out row with
        # every system, up to 64 tokens each, the 4-bit base model at a few tokens/s on CPU.
        data["eval_split"] = 0.015
    recipe["train"] = {"max_steps": TINY_STEPS, "lr": 3e-3, "batch_size": 8, "logging_steps": 10,
                       "save_steps": 1000}
    if "export" in recipe:
        recipe["export"]["samples"] = 2
    if "merge" in recipe:
        recipe["merge"]["samples"] = 2
    # Whether eval runs in `train` stays the recipe's; when it does, 4 short answers. (`qlora-kit eval RUN` takes
    # its own flags instead: the held-out rows above keep it short.)
    recipe["eval"] = {**recipe.get("eval", {}), "samples": 4, "max_new_tokens": 8}
    return recipe


def make_targets(makefile: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, flags=re.M))


def modelfile_from(modelfile: Path) -> Path:
    """The file a Modelfile's FROM names, resolved as Ollama resolves it: relative to the Modelfile."""
    line = next(line for line in modelfile.read_text().splitlines() if line.startswith("FROM "))
    target = Path(line.split(None, 1)[1].strip())
    return target if target.is_absolute() else (modelfile.parent / target)


def heading_slugs(text: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    slugs = set()
    for heading in re.findall(r"^#+\s+(.*)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


FIELDS_HEADER = """# Recipe fields

Every field of a recipe, as `qlora-kit schema --table` prints it (generated: `python tests/readme_commands.py
fields` rewrites this file, and tests/test_readme.py fails when it is out of date). What each section is for, and
the shipped recipes: [recipes.md](recipes.md).

"""


def fields_page(table: str) -> str:
    return FIELDS_HEADER + table.rstrip("\n") + "\n"


if __name__ == "__main__":
    import subprocess
    import sys

    if sys.argv[1:] != ["fields"]:
        sys.exit("usage: python tests/readme_commands.py fields   (rewrites docs/recipe-fields.md)")
    root = Path(__file__).resolve().parent.parent
    table = subprocess.run([sys.executable, "-m", "qlora_kit", "schema", "--table"], check=True, capture_output=True,
                           text=True, cwd=root).stdout
    (root / "docs" / "recipe-fields.md").write_text(fields_page(table))
