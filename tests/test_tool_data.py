"""Tool calls and reasoning as data (issue #27): parsed from OpenAI, legacy function calling, ShareGPT and the
preference formats, checked row by row with one-line problems naming the line, and never dropped in rendering:
a template that cannot render them refuses the row; a template that can trains the call and keeps results as context."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from qlora_kit.data.encode import IGNORE_INDEX, apply_chat_template_choice, encode_example
from qlora_kit.data.formats import RowProblem, convert_row, detect_format
from qlora_kit.data.prepare import convert_rows
from qlora_kit.data.sources import read_rows
from qlora_kit.errors import DataError

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TOOLS = [WEATHER]


def call(name="get_weather", args='{"city": "city0"}', id_="call_1"):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


# The row: OpenAI's function-calling fine-tuning format, call -> result -> final answer.
ROW = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "What is the weather in city0?"},
    {"role": "assistant", "tool_calls": [call()]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
    {"role": "assistant", "content": "It is 21 degrees in city0."}]}


def convert(row):
    return convert_row(detect_format(row, "row"), row)


def test_openai_tool_row_keeps_tools_calls_and_results():
    example = convert(ROW)
    assert example.tools == TOOLS
    assert example.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "city0"}}}]}
    assert example.messages[2] == {"role": "tool", "content": "{\"temp_c\": 21}", "tool_call_id": "call_1",
                                   "name": "get_weather"}


def test_legacy_function_calling_becomes_tool_calls():
    row = {"functions": [WEATHER["function"]], "messages": [
        {"role": "user", "content": "w?"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{\"city\": \"a\"}"}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}]}
    example = convert(row)
    assert example.tools == TOOLS
    assert example.messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "a"}}}]
    assert example.messages[2] == {"role": "tool", "content": "sunny", "name": "get_weather"}


def test_sharegpt_function_call_and_observation_turns():
    row = {"tools": json.dumps([WEATHER["function"]]), "conversations": [
        {"from": "human", "value": "w?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "b"}})},
        {"from": "observation", "value": "rain"},
        {"from": "gpt", "value": "Rain."}]}
    example = convert(row)
    assert example.tools == TOOLS
    assert [m["role"] for m in example.messages] == ["user", "assistant", "tool", "assistant"]
    assert example.messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "b"}}


def test_reasoning_from_the_key_or_a_think_block():
    for assistant in ({"role": "assistant", "content": "four", "reasoning_content": "two and two"},
                      {"role": "assistant", "content": "<think>\ntwo and two\n</think>\n\nfour"}):
        example = convert({"messages": [{"role": "user", "content": "2+2?"}, assistant]})
        assert example.messages[1] == {"role": "assistant", "content": "four", "reasoning_content": "two and two"}


def test_openai_dpo_with_tools_and_a_call_as_the_preferred_answer():
    row = {"input": {"messages": [{"role": "user", "content": "w?"}], "tools": TOOLS},
           "preferred_output": [{"role": "assistant", "tool_calls": [call()]}],
           "non_preferred_output": [{"role": "assistant", "content": "I cannot check the weather."}]}
    example = convert(row)
    assert example.kind == "pair" and example.tools == TOOLS
    assert example.chosen[0]["tool_calls"][0]["function"]["name"] == "get_weather"


def _msgs(*extra, tools=TOOLS, **row):
    return {**({"tools": tools} if tools else {}), **row,
            "messages": [{"role": "user", "content": "w?"}, *extra]}


BAD_ROWS = [
    (_msgs({"role": "assistant", "tool_calls": [call(args="{city: 1}")]}),
     "messages[1].tool_calls[0].arguments is not valid JSON (Expecting property name enclosed in double quotes at "
     "character 1)"),
    (_msgs({"role": "assistant", "tool_calls": [call(args="[1, 2]")]}),
     "messages[1].tool_calls[0].arguments must be a JSON object, not list"),
    (_msgs({"role": "assistant", "tool_calls": [call(name="get_wether")]}),
     "messages[1].tool_calls[0] calls 'get_wether', which is not among the row's tools (get_weather)"),
    (_msgs({"role": "assistant", "tool_calls": [call()]}, tools=None),
     "messages[1].tool_calls[0] calls 'get_weather' but the row has no tools list; add 'tools' with its definition"),
    (_msgs({"role": "tool", "content": "x"}, {"role": "assistant", "content": "a"}),
     "messages[1] (tool) answers no earlier tool call"),
    (_msgs({"role": "assistant", "tool_calls": [call()]}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}),
     "messages[2].tool_call_id 'call_9' answers no open call (open: 'call_1')"),
    (_msgs({"role": "assistant", "tool_calls": [call()]}, {"role": "assistant", "content": "a"}),
     "messages[2] (assistant): the call(s) of messages[1] have no tool result before it; add a tool message "
     "answering each call"),
    (_msgs({"role": "assistant", "tool_calls": [call(), call(id_="call_1")]}),
     "messages[1].tool_calls[1].id 'call_1' is used twice in the row"),
    (_msgs({"role": "assistant", "tool_calls": [call(), call(id_="call_2")]}, parallel_tool_calls=False),
     "messages[1] has 2 calls but parallel_tool_calls is false"),
    (_msgs({"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]}),
     "messages[1].tool_calls[0] has no function name"),
    (_msgs({"role": "assistant", "content": "<think>a</think>b", "reasoning_content": "a"}),
     "messages[1] has reasoning_content and a <think> block in its content; keep one"),
    (_msgs({"role": "user", "content": "x", "tool_calls": [call()]}),
     "messages[1] (user): only assistant messages have tool_calls, function_call or reasoning_content"),
    (_msgs({"role": "assistant", "content": "a"}, tools=[{"type": "function", "function": {"description": "x"}}]),
     "'tools'[0] must be a function with a name ({'type': 'function', 'function': {'name', 'description', "
     "'parameters'}})"),
    ({"tools": TOOLS, "conversations": [{"from": "human", "value": "w?"},
                                        {"from": "function_call", "value": '{"name": "nope", "arguments": {}}'}]},
     "conversations[1].tool_calls[0] calls 'nope', which is not among the row's tools (get_weather)"),
]


def test_every_malformed_tool_row_is_one_problem_naming_its_line(tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", [ROW] + [row for row, _ in BAD_ROWS])
    examples = convert_rows(read_rows(str(path), "data.path"), "openai")
    assert len(examples.items) == 1
    sharegpt = convert_rows(read_rows(str(write_jsonl(tmp_path / "s.jsonl", [BAD_ROWS[-1][0]])), "data.path"),
                            "sharegpt")
    problems = examples.problems[:-1] + sharegpt.problems  # the ShareGPT row is not OpenAI's format
    assert [p.where for p in problems[:-1]] == [f"{path}:{n}" for n in range(2, len(BAD_ROWS) + 1)]
    assert [p.detail for p in problems] == [detail for _, detail in BAD_ROWS]
    assert all("\n" not in p.detail for p in problems)


def _tokenizer(template: str):
    from transformers import AutoTokenizer

    from qlora_kit.model.builtin import materialize

    tok = AutoTokenizer.from_pretrained(materialize("builtin:tiny-llama"))
    apply_chat_template_choice(tok, template)
    return tok


def _trained_text(tok, enc) -> str:
    return tok.decode([t for t in enc.labels if t != IGNORE_INDEX])


def test_a_template_that_drops_tools_refuses_the_row_in_one_line():
    with pytest.raises(DataError) as info:
        encode_example(_tokenizer("alpaca"), convert(ROW), "responses", "tools.jsonl:1")
    message = str(info.value)
    assert message.startswith("tools.jsonl:1: the row has tools or tool calls, but the chat template drops the tools "
                              "list, the calls, the call arguments, the tool results; set data.chat_template to one "
                              "that renders tools (")
    assert "\n" not in message and "chatml" in message


def test_chatml_trains_the_call_and_keeps_results_and_tools_as_context():
    tok = _tokenizer("chatml")
    enc = encode_example(tok, convert(ROW), "responses", "tools.jsonl:1")
    text, trained = tok.decode(enc.input_ids), _trained_text(tok, enc)
    assert "get_weather" in text.split("<|im_start|>user")[0]  # the tools list, in the system turn
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city":"city0"}}\n</tool_call>' in trained
    assert "It is 21 degrees in city0." in trained
    assert "temp_c" in text and "temp_c" not in trained  # the tool result is context
    assert "Weather now in a city" not in trained


@pytest.mark.parametrize("train_reasoning", [True, False])
def test_reasoning_trained_or_kept_as_context(train_reasoning):
    tok = _tokenizer("chatml")  # no place for reasoning: written as a <think> block before the answer
    example = convert({"messages": [{"role": "user", "content": "2+2?"},
                                    {"role": "assistant", "content": "four", "reasoning_content": "two and two"}]})
    enc = encode_example(tok, example, "responses", "r", train_reasoning)
    assert "<think>\ntwo and two\n</think>\n\nfour" in tok.decode(enc.input_ids)
    trained = _trained_text(tok, enc)
    assert ("two and two" in trained) is train_reasoning
    assert trained.startswith("<think>" if train_reasoning else "four")


def test_a_reply_with_calls_becomes_an_openai_message_with_tool_calls():
    from qlora_kit.runtime.chat_handler import _as_stream, _objects, with_tool_calls

    reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "choices": [{
        "index": 0, "message": {"role": "assistant", "content":
                                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'},
        "logprobs": None, "finish_reason": "stop"}]}
    out = with_tool_calls(reply, "hermes")
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    chunks = list(_as_stream(out))
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    plain = {**reply, "choices": [{**reply["choices"][0], "message": {"role": "assistant", "content": "Hi."}}]}
    assert with_tool_calls(plain, "hermes")["choices"][0] == {**plain["choices"][0], "finish_reason": "stop"}
    # What an OpenAI client sends back (arguments as JSON text) is rendered as the object training saw.
    sent = [{"role": "assistant", "content": None, "tool_calls": out["choices"][0]["message"]["tool_calls"]}]
    assert _objects(sent)[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}


@pytest.mark.parametrize("train_reasoning", [True, False])
def test_qwen3_keeps_the_last_turns_thinking_and_trains_earlier_turns_as_shown(train_reasoning):
    """Qwen3's rule: thinking after the last user message is rendered, earlier thinking is dropped; an earlier turn
    is trained as the whole conversation shows it (without its thinking), the last with it unless
    data.train_reasoning is false."""
    tok = _tokenizer("qwen3")
    example = convert({"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>two and two</think>four"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "six", "reasoning_content": "three and three"}]})
    enc = encode_example(tok, example, "responses", "r", train_reasoning)
    text = tok.decode(enc.input_ids)
    assert "two and two" not in text  # dropped from the earlier turn, as Qwen3's template does
    assert "<|im_start|>assistant\n<think>\nthree and three\n</think>\n\nsix<|im_end|>" in text
    trained = _trained_text(tok, enc)
    assert trained.startswith("four<|im_end|>")
    assert ("three and three" in trained) is train_reasoning
    assert trained.endswith("six<|im_end|>\n") or trained.endswith("six<|im_end|>")


def test_data_columns_maps_a_tools_column(tmp_path):
    from qlora_kit.data.prepare import load_examples
    from qlora_kit.recipe.schema import DataSection

    row = {"functions_json": json.dumps(TOOLS), "conversations": [
        {"from": "human", "value": "w?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "c"}})},
        {"from": "observation", "value": "rain"}, {"from": "gpt", "value": "Rain."}]}
    path = write_jsonl(tmp_path / "glaive.jsonl", [row, row])
    items, _, _ = load_examples(DataSection(path=str(path), columns={"tools": "functions_json"}), seed=0)
    assert [e.tools for _, e in items] == [TOOLS, TOOLS]
