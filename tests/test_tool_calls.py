"""Tool calling (#27) without a model: parsing each family's output, scoring calls, the shipped dataset."""

import importlib.util
import json
from pathlib import Path

import pytest

from qlora_kit.data.sources import BUILTIN_DATASETS
from qlora_kit.eval.tool_scoring import aggregate, same_json, score_tool_calls
from qlora_kit.runtime.tool_calls import PARSERS, family_for_template, parse_tool_calls

ASSETS = Path(__file__).resolve().parent.parent / "qlora_kit" / "assets"


def names_args(parsed):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls]


def call(name, arguments, call_id="x"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- hermes ---------------------------------------------------------------------------------------------------

def test_hermes_single_call_is_openai_shaped():
    p = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "hermes")
    assert p.tool_calls == [{"id": "call_0", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert (p.content, p.reasoning, p.malformed) == ("", None, 0)


def test_hermes_parallel_calls_with_content_around():
    text = ('Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_local_time", "arguments": {"city": "Lima"}}\n</tool_call>\nOne moment.')
    p = parse_tool_calls(text, "hermes")
    assert names_args(p) == [("get_weather", {"city": "Oslo"}), ("get_local_time", {"city": "Lima"})]
    assert [c["id"] for c in p.tool_calls] == ["call_0", "call_1"]
    assert p.content.startswith("Let me check both.") and p.content.endswith("One moment.")
    assert "<tool_call>" not in p.content


def test_hermes_leading_think_goes_to_reasoning():
    text = ('<think>\nThe user wants Rome.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Rome"}}\n</tool_call>')
    p = parse_tool_calls(text, "hermes")
    assert p.reasoning == "The user wants Rome." and p.content == "" and names_args(p)[0][1] == {"city": "Rome"}
    # Qwen3 with thinking off writes an empty block: no reasoning; a prompt that opened the block leaves only its end
    assert parse_tool_calls("<think>\n\n</think>\n\nHello", "hermes").reasoning is None
    p = parse_tool_calls("thinking hard</think>Hi", "hermes")
    assert (p.reasoning, p.content) == ("thinking hard", "Hi")


def test_hermes_malformed_calls_are_counted_and_kept():
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>\n'  # broken JSON
            '<tool_call>\n{"arguments": {"city": "Rome"}}\n</tool_call>\n'  # no name
            '<tool_call>\n{"name": "set_timer", "arguments": "5"}\n</tool_call>\n'  # arguments not an object
            '<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}}\n</tool_call>')
    p = parse_tool_calls(text, "hermes")
    assert p.malformed == 3 and names_args(p) == [("set_timer", {"minutes": 5})]
    assert '"city": "Paris"' in p.content and '"city": "Rome"' in p.content


def test_hermes_unclosed_last_block_and_plain_text():
    p = parse_tool_calls('<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 3}}', "hermes")
    assert names_args(p) == [("set_timer", {"minutes": 3})]
    p = parse_tool_calls("  Paris is the capital.  ", "hermes")
    assert (p.content, p.tool_calls, p.malformed) == ("Paris is the capital.", [], 0)


# --- llama-3 --------------------------------------------------------------------------------------------------

def test_llama3_single_tagged_and_untagged():
    for text in ('{"name": "get_weather", "parameters": {"city": "Cairo"}}',
                 '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Cairo"}}'):
        p = parse_tool_calls(text, "llama-3")
        assert names_args(p) == [("get_weather", {"city": "Cairo"})] and p.content == "" and p.malformed == 0


def test_trailing_end_of_turn_markers_are_dropped():
    # decoded with special tokens kept (the call markers are special tokens), the end marker comes along
    p = parse_tool_calls('<|python_tag|>{"name": "a", "parameters": {}}<|eom_id|>', "llama-3")
    assert names_args(p) == [("a", {})] and p.malformed == 0
    p = parse_tool_calls('[TOOL_CALLS][{"name": "a", "arguments": {}}]</s>', "mistral")
    assert names_args(p) == [("a", {})] and p.content == ""
    assert parse_tool_calls("Hello.<|im_end|>", "hermes").content == "Hello."


def test_llama3_parallel_calls_separated_by_semicolons():
    text = '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}};{"name": "c", "arguments": {}}'
    assert [n for n, _ in names_args(parse_tool_calls(text, "llama-3"))] == ["a", "b", "c"]


def test_llama3_content_and_think():
    p = parse_tool_calls("The weather in Paris is mild.", "llama-3")
    assert (p.content, p.tool_calls, p.malformed) == ("The weather in Paris is mild.", [], 0)
    # JSON that is not a call is an answer, not a malformed call
    p = parse_tool_calls('{"city": "Paris", "population": 2100000}', "llama-3")
    assert p.tool_calls == [] and p.malformed == 0 and p.content.startswith('{"city"')
    p = parse_tool_calls('<think>use the tool</think>{"name": "f", "parameters": {"q": "x"}}', "llama-3")
    assert p.reasoning == "use the tool" and names_args(p) == [("f", {"q": "x"})]


def test_llama3_malformed():
    for text in ('{"name": "get_weather", "parameters": {"city": "Cairo"', '<|python_tag|>get_weather(city="Cairo")',
                 '{"name": "get_weather", "parameters": "Cairo"}'):
        p = parse_tool_calls(text, "llama-3")
        assert p.tool_calls == [] and p.malformed == 1 and p.content, text
    p = parse_tool_calls('{"name": "a", "parameters": {}}; {"name": 3, "parameters": {}}', "llama-3")
    assert [n for n, _ in names_args(p)] == ["a"] and p.malformed == 1


# --- mistral --------------------------------------------------------------------------------------------------

def test_mistral_single_parallel_and_ids():
    p = parse_tool_calls('[TOOL_CALLS][{"name": "set_timer", "arguments": {"minutes": 4}}]', "mistral")
    assert names_args(p) == [("set_timer", {"minutes": 4})] and p.tool_calls[0]["id"] == "call_0"
    text = ('[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}, "id": "abcDEF123"}, '
            '{"name": "b", "arguments": {"y": "z"}, "id": "ghiJKL456"}]')
    p = parse_tool_calls(text, "mistral")
    assert names_args(p) == [("a", {"x": 1}), ("b", {"y": "z"})]
    assert [c["id"] for c in p.tool_calls] == ["abcDEF123", "ghiJKL456"]  # the model's ids: its template checks them


def test_mistral_content_think_and_newer_syntax():
    p = parse_tool_calls('<think>hm</think>Sure. [TOOL_CALLS][{"name": "f", "arguments": {}}]', "mistral")
    assert (p.reasoning, p.content, names_args(p)) == ("hm", "Sure.", [("f", {})])
    p = parse_tool_calls('[TOOL_CALLS]get_weather[ARGS]{"city": "Quito"}', "mistral")
    assert names_args(p) == [("get_weather", {"city": "Quito"})]
    assert parse_tool_calls("No tools needed.", "mistral").content == "No tools needed."


def test_mistral_malformed():
    p = parse_tool_calls('[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}', "mistral")
    assert p.tool_calls == [] and p.malformed == 1 and "[TOOL_CALLS]" in p.content
    p = parse_tool_calls('[TOOL_CALLS][{"arguments": {}}, {"name": "g", "arguments": []}, {"name": "h"}]', "mistral")
    assert [n for n, _ in names_args(p)] == ["h"] and p.malformed == 2


def test_unknown_family_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        parse_tool_calls("x", "qwen")
    assert all(name in str(err.value) for name in PARSERS)


def test_family_for_template():
    assert [family_for_template(n) for n in ("chatml", "qwen3", "llama-3", "mistral", "gemma", "alpaca")] == \
        ["hermes", "hermes", "llama-3", "mistral", None, None]
    assert family_for_template("{%- if tools %}<tool_call>\\n{{ tool_call | tojson }}") == "hermes"
    assert family_for_template('{{- "[TOOL_CALLS][" }}') == "mistral"
    assert family_for_template("{{- '<|python_tag|>' }}") == "llama-3"
    assert family_for_template("{%- if message.role == 'ipython' %}") == "llama-3"
    assert family_for_template("{{ messages }}") is None


# --- scoring --------------------------------------------------------------------------------------------------

def test_score_order_insensitive_and_json_equal():
    expected = [call("a", '{"x": 1, "y": "z"}'), call("b", {"n": 2.5})]
    predicted = [call("b", '{"n": 2.5}'), call("a", {"y": "z", "x": 1.0})]  # reordered, 1.0, dict vs string
    s = score_tool_calls(predicted, expected)
    assert (s.expected, s.predicted, s.name_correct, s.exact, s.row_exact) == (2, 2, 2, 2, True)
    assert s.as_dict() == {"expected": 2, "predicted": 2, "name_correct": 2, "exact": 2, "row_exact": True}
    assert not same_json({"x": True}, {"x": 1}) and same_json([1, {"a": 2}], [1.0, {"a": 2.0}])


def test_score_exact_pairs_before_name_pairs():
    # the first predicted call has the right name but wrong args; it must not take the exact twin's place
    expected = [call("a", {"x": 1}), call("a", {"x": 2})]
    s = score_tool_calls([call("a", {"x": 2}), call("a", {"x": 3})], expected)
    assert (s.exact, s.name_correct, s.row_exact) == (1, 2, False)


def test_score_extra_missing_and_bad_calls():
    expected = [call("a", {"x": 1})]
    s = score_tool_calls([call("a", {"x": 1}), call("b", {})], expected)  # extra call
    assert (s.predicted, s.exact, s.row_exact) == (2, 1, False)
    s = score_tool_calls([], expected)  # missing call
    assert (s.predicted, s.exact, s.name_correct, s.row_exact) == (0, 0, 0, False)
    s = score_tool_calls([call("a", '{"x": 1')], expected)  # unparseable arguments: a wrong call, right name
    assert (s.exact, s.name_correct, s.row_exact) == (0, 1, False)
    s = score_tool_calls([call("a", '[1]')], expected)
    assert s.exact == 0
    s = score_tool_calls([call("a", {"x": 1})], expected, malformed=1)  # an unreadable extra call
    assert (s.predicted, s.exact, s.row_exact) == (2, 1, False)
    with pytest.raises(ValueError):
        score_tool_calls([], [call("a", "not json")])


def test_score_no_call_rows_and_aggregate():
    assert score_tool_calls([], []).row_exact  # rightly answered without a tool
    wrong = score_tool_calls([call("a", {})], [])
    assert (wrong.predicted, wrong.row_exact) == (1, False)
    right = score_tool_calls([call("a", {"x": 1})], [call("a", {"x": 1})])
    half = score_tool_calls([call("a", {"x": 2})], [call("a", {"x": 1})])
    agg = aggregate([score_tool_calls([], []), wrong, right, half])
    assert agg["rows"] == 4 and agg["expected_calls"] == 2 and agg["predicted_calls"] == 3
    assert agg["call_precision"] == pytest.approx(1 / 3) and agg["call_recall"] == pytest.approx(1 / 2)
    assert agg["call_f1"] == pytest.approx(0.4) and agg["name_accuracy"] == 1.0 and agg["row_exact_rate"] == 0.5
    none = aggregate([score_tool_calls([], [])])
    assert none["call_precision"] is None and none["call_recall"] is None and none["row_exact_rate"] == 1.0


# --- the shipped dataset --------------------------------------------------------------------------------------

def _builder():
    spec = importlib.util.spec_from_file_location("build_tool_calls", ASSETS / "build_tool_calls.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(name):
    return [json.loads(line) for line in (ASSETS / name).read_text(encoding="utf-8").splitlines()]


def test_builder_reproduces_the_committed_files(tmp_path):
    _builder().main(tmp_path)
    for name in ("tool_calls_train.jsonl", "tool_calls_eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes(), name
    assert BUILTIN_DATASETS["tool-calls"] == ASSETS / "tool_calls_train.jsonl"
    assert BUILTIN_DATASETS["tool-calls-eval"] == ASSETS / "tool_calls_eval.jsonl"


def test_held_out_argument_values_are_never_trained():
    builder = _builder()
    train, held_out = _rows("tool_calls_train.jsonl"), _rows("tool_calls_eval.jsonl")
    assert (len(train), len(held_out)) == (160, 48)
    assert builder.argument_values(held_out) and not builder.argument_values(train) & builder.argument_values(held_out)
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in held_out}


@pytest.mark.parametrize("name", ["tool_calls_train.jsonl", "tool_calls_eval.jsonl"])
def test_every_row_is_a_valid_openai_tool_row(name):
    kinds = {"call": 0, "result": 0, "plain": 0}
    for row in _rows(name):
        tools = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
        assert len(tools) == 4 and row["messages"][0]["role"] == "user"
        ids = set()
        for m in row["messages"]:
            for c in m.get("tool_calls", []):
                assert m["role"] == "assistant" and "content" not in m and c["type"] == "function"
                assert c["id"].isalnum() and len(c["id"]) == 9  # Mistral's template requires it
                args = json.loads(c["function"]["arguments"])
                params = tools[c["function"]["name"]]
                assert isinstance(args, dict) and set(params["required"]) <= set(args) <= set(params["properties"])
                ids.add(c["id"])
            if m["role"] == "tool":
                assert m["tool_call_id"] in ids and isinstance(json.loads(m["content"]), dict)
        roles = [m["role"] for m in row["messages"]]
        kinds[{2: "call" if "tool_calls" in row["messages"][1] else "plain", 4: "result"}[len(roles)]] += 1
        assert roles in (["user", "assistant"], ["user", "assistant", "tool", "assistant"])
        assert isinstance(row["messages"][-1].get("content", ""), str) or "tool_calls" in row["messages"][-1]
    assert kinds["plain"] and kinds["result"] and kinds["call"] > kinds["result"] > kinds["plain"]
