"""Recorded answers: the old hosted model's answers to the held-out rows, scored as one more system (the migration
check: does the local fine-tune match or beat the model it replaces, on the user's own rows?).

Notable choices:
- A system name, `recorded:FILE`, not a flag of its own: it sits beside `gguf:TYPE` in `--systems`, in the recipe's
  `eval.systems` list and in `qk.evaluate(systems=[...])`, so one list says what is compared, the report names each
  system as it was asked for, and two old models (two vendors) are two names, with no flags to pair up.
- A line is one JSON object, in any of three shapes a user will have saved:
    {"messages": [... up to the last user turn], "answer": "text"}
    {"messages": [...], "response": {"choices": [{"message": {"content": "text"}}]}}  (a chat-completions reply)
    {"messages": [..., {"role": "assistant", "content": "text"}]}                     (the answer as the last message)
- A recorded line answers the held-out rows whose prompt (the messages before the reference: roles and text, with
  the recipe's data.system_prompt added to a conversation that has no system message, as the data stage adds it to
  the held-out rows) is identical. Every evaluated held-out row needs an answer, else exit 2 naming the first one
  missing: a verdict on some of the rows would not be the verdict on the user's rows. Recorded lines for other
  prompts are not scored, without an error: the held-out split is drawn by seed, so a file of the old model's
  answers to the whole dataset is the natural thing to pass. report.json counts them, and a warning names the lines
  that match no row of the data at all (a prompt that differs: another system message, changed whitespace).
- Two lines with the same prompt and different answers are refused: which one is the old model's is not ours to pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlora_kit.errors import DataError, UsageError

SHAPES = ("'answer', a chat-completions 'response' ({\"choices\": [{\"message\": {\"content\": ...}}]}), or "
          "'messages' ending with the assistant's answer")


@dataclass(frozen=True)
class RecordedRow:
    where: str  # file:line
    messages: tuple  # the prompt: ({"role", "content"}, ...), as the old model received it
    answer: str


@dataclass(frozen=True)
class Recorded:
    spec: str  # the path as the user gave it
    rows: tuple[RecordedRow, ...]


@dataclass(frozen=True)
class Matched:
    answers: list[str]  # one per evaluated held-out row, in order
    summary: dict  # what report.json says about the file
    warning: str | None


def load_recorded(spec: str, field: str = "--systems") -> Recorded:
    """Parse the file (exit 2 on the first bad line, naming it); matching needs the held-out rows (`match`)."""
    from qlora_kit.data.sources import _read_jsonl

    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"{field} recorded:{spec}: {'not a file' if path.exists() else 'no such file'}")
    rows = []
    for row in _read_jsonl(path, label=spec).rows:
        if row.problem:
            raise DataError(f"{row.where}: {row.problem}")
        rows.append(parse_line(row.value, row.where))
    if not rows:
        raise DataError(f"{field} recorded:{spec}: the file holds no recorded answers")
    return Recorded(spec, tuple(rows))


def parse_line(value: object, where: str) -> RecordedRow:
    if not isinstance(value, dict):
        raise DataError(f"{where}: a recorded answer must be a JSON object, not a {type(value).__name__}")
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list (the conversation the old model answered)")
    messages = [_message(m, f"{where}: messages[{i}]") for i, m in enumerate(messages)]
    given = [k for k in ("answer", "response") if k in value]
    sources = [f"'{k}'" for k in given] + (["a last assistant message"] if messages[-1]["role"] == "assistant" else [])
    if len(sources) > 1:
        raise DataError(f"{where}: {' and '.join(sources)}: more than one answer; keep one")
    if given == ["answer"]:
        answer = value["answer"]
    elif given == ["response"]:
        answer = _response_text(value["response"], where)
    elif messages[-1]["role"] == "assistant":
        answer, messages = messages[-1]["content"], messages[:-1]
    else:
        raise DataError(f"{where}: no answer; give {SHAPES}")
    if not isinstance(answer, str):
        raise DataError(f"{where}: the answer must be a string, not {type(answer).__name__}")
    if not messages:
        raise DataError(f"{where}: no prompt: 'messages' holds only the answer")
    return RecordedRow(where, tuple(messages), answer)


def _message(m: object, what: str) -> dict:
    from qlora_kit.data.formats import ROLES, RowProblem, _text

    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise DataError(f"{what} must be an object with a role ({', '.join(ROLES)})")
    try:
        return {"role": m["role"], "content": _text(m.get("content") or "", "its content")}
    except RowProblem as p:
        raise DataError(f"{what}: {p.detail}") from None


def _response_text(response: object, where: str) -> object:
    try:
        return response["choices"][0]["message"]["content"]
    except (TypeError, KeyError, IndexError):
        raise DataError(f"{where}: 'response' has no choices[0].message.content (a chat-completions reply "
                        "holds one)") from None


def prompt_key(messages) -> tuple:
    return tuple((m["role"], m["content"]) for m in messages)


def match(recorded: Recorded, rows: list, every: list, system_prompt: str | None) -> Matched:
    """Answers for `rows` (the evaluated held-out rows); `every` is every row of the data (held out, left out by
    --samples or as leaked, and training rows), to tell an unscored line from one that matches nothing."""
    from qlora_kit.data.formats import Example
    from qlora_kit.data.prepare import add_system_prompt

    answers: dict[tuple, RecordedRow] = {}
    for line in recorded.rows:
        key = prompt_key(add_system_prompt(Example(messages=list(line.messages)), system_prompt).messages)
        first = answers.setdefault(key, line)
        if first.answer != line.answer:
            raise DataError(f"{line.where}: the same prompt as {first.where} with a different answer; keep one "
                            "answer per prompt")
    missing = [r for r in rows if r.prompt_key not in answers]
    if missing:
        raise DataError(
            f"--systems recorded:{recorded.spec}: no recorded answer for held-out row {missing[0].where} "
            f"({len(missing)} of {len(rows)} have none); a line answers a row when its messages equal the row's "
            "prompt (data.system_prompt added as to the data); predictions.jsonl of any eval lists the prompts")
    scored = {r.prompt_key for r in rows}
    known = {r.prompt_key for r in every}
    unscored = [line for key, line in answers.items() if key not in scored]
    strangers = sorted((line for key, line in answers.items() if key not in known), key=_line)
    warning = None
    if strangers:
        warning = (f"{len(strangers)} line(s) of {recorded.spec} match no row of the data and were not scored "
                   f"(first: {strangers[0].where}): is their prompt the same (system message, whitespace)?")
    summary = {"file": recorded.spec, "lines": len(recorded.rows), "rows_scored": len(rows),
               "prompts_not_scored": len(unscored), "prompts_matching_no_row": len(strangers)}
    return Matched([answers[r.prompt_key].answer for r in rows], summary, warning)


def _line(row: RecordedRow) -> int:
    return int(row.where.rsplit(":", 1)[-1])
