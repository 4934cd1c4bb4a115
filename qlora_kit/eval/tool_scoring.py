"""Scores of predicted tool calls against the expected ones (issue #27).

Both sides are OpenAI-style lists ({"function": {"name", "arguments"}}, `arguments` a JSON string or a dict). A call
is exact when its name is the same and its arguments are the same JSON value: key order does not matter, 1 equals
1.0, but true is not 1 (Python's == would say it is). Calls are matched order-insensitively, since parallel calls
have no order: exact pairs first, then the rest by name, so a call is never paired away from its exact twin.
A predicted argument string that is not a JSON object is a wrong call; an expected one is broken data and raises.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ToolScore:
    expected: int  # calls expected
    predicted: int  # calls predicted, malformed ones (written but unreadable) included
    name_correct: int  # expected calls matched by a predicted call of the same name
    exact: int  # expected calls matched by a predicted call with the same name and arguments
    row_exact: bool  # as many calls as expected, all exact (no call expected, none made: True)

    def as_dict(self) -> dict:
        return asdict(self)


def _name_and_args(call: dict, side: str) -> tuple[object, object]:
    """(name, arguments as a dict, or None when they are not a JSON object)."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict):
        if side == "expected":
            raise ValueError(f"expected tool call {call!r}: not a call")
        return None, None
    name, arguments = function.get("name"), function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        if side == "expected":
            raise ValueError(f"expected tool call {call!r}: arguments are not a JSON object")
        arguments = None
    return name, arguments


def same_json(a: object, b: object) -> bool:
    """JSON equality: numbers by value (1 == 1.0), booleans only equal to booleans, objects by key set."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def score_tool_calls(predicted: list[dict], expected: list[dict], malformed: int = 0) -> ToolScore:
    """Score one row. `malformed`: calls the model wrote that could not be parsed (runtime.tool_calls' count);
    each is a predicted call that matches nothing."""
    pred = [_name_and_args(c, "predicted") for c in predicted or []]
    want = [_name_and_args(c, "expected") for c in expected or []]
    free = set(range(len(pred)))
    exact = name_only = 0
    unmatched = []
    for name, args in want:
        hit = next((i for i in sorted(free) if pred[i][0] == name and pred[i][1] is not None
                    and same_json(pred[i][1], args)), None)
        if hit is None:
            unmatched.append(name)
        else:
            free.discard(hit)
            exact += 1
    for name in unmatched:  # second pass: the name was right, the arguments were not
        hit = next((i for i in sorted(free) if pred[i][0] == name), None)
        if hit is not None:
            free.discard(hit)
            name_only += 1
    n_pred = len(pred) + malformed
    return ToolScore(expected=len(want), predicted=n_pred, name_correct=exact + name_only, exact=exact,
                     row_exact=n_pred == len(want) == exact)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None  # undefined (nothing to divide by) is None, not a flattering 0 or 1


def aggregate(scores: list[ToolScore]) -> dict:
    """Totals over rows: call precision/recall/F1 of exact calls, name accuracy (of expected calls), row exact
    rate. A ratio with nothing to count over (no call predicted, none expected) is None."""
    expected = sum(s.expected for s in scores)
    predicted = sum(s.predicted for s in scores)
    exact = sum(s.exact for s in scores)
    precision, recall = _ratio(exact, predicted), _ratio(exact, expected)
    f1 = (2 * precision * recall / (precision + recall) if precision and recall else
          (0.0 if precision is not None and recall is not None else None))
    return {"rows": len(scores), "expected_calls": expected, "predicted_calls": predicted, "exact_calls": exact,
            "call_precision": precision, "call_recall": recall, "call_f1": f1,
            "name_accuracy": _ratio(sum(s.name_correct for s in scores), expected),
            "row_exact_rate": _ratio(sum(s.row_exact for s in scores), len(scores))}
