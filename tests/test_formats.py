"""Row formats: conversion, auto-detection, and the problem kinds `data check` counts."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from qlora_kit.data.formats import FORMATS, RowProblem, convert_row, detect_format, get_format
from qlora_kit.data.prepare import convert_rows
from qlora_kit.data.sources import read_rows
from qlora_kit.errors import DataError

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


@pytest.mark.parametrize("row, fmt, messages", [
    ({"messages": CHAT}, "openai", CHAT),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}, "sharegpt", CHAT),
    ({"instruction": "Hi", "input": "", "output": "Hello."}, "alpaca", CHAT),
    ({"instruction": "Sum", "input": "1 2", "output": "3"}, "alpaca",
     [{"role": "user", "content": "Sum\n\n1 2"}, {"role": "assistant", "content": "3"}]),
    ({"prompt": "Hi", "completion": "Hello."}, "prompt_completion", CHAT),
    ({"prompt": CHAT[:1], "completion": CHAT[1:]}, "prompt_completion", CHAT),
])
def test_formats_detect_and_convert_to_the_same_conversation(row, fmt, messages):
    detected = detect_format(row, "row 1")
    assert detected.name == fmt
    assert convert_row(detected, row).messages == messages


def test_text_format_keeps_text():
    example = convert_row(get_format("text"), {"text": "plain words"})
    assert example.text == "plain words" and example.messages is None


def test_openai_weight_and_content_parts():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "x", "weight": 0},
                        {"role": "user", "content": "c"}, {"role": "assistant", "content": "y", "weight": 1}]}
    out = convert_row(get_format("openai"), row).messages
    assert out[0]["content"] == "ab"
    assert [m.get("weight") for m in out] == [None, 0, None, 1]


@pytest.mark.parametrize("row, kind, detail", [
    ({"messages": []}, "no_messages", "'messages' must be a non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "unknown_role",
     "messages[0] has role 'bot'; allowed: system, user, assistant, tool, function"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}, "missing_content",
     "messages[1] (assistant) has no content"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no_assistant_turn",
     "the conversation has no assistant message to train on"),
    ({"messages": [{"role": "user", "content": "x", "mood": 1}]}, "unknown_key", "messages[0] has unknown key(s) mood"),
    ({}, "empty_row", "the row is empty"),
    ({"messages": None}, "empty_row", "the row is empty"),
])
def test_openai_problem_kinds(row, kind, detail):
    with pytest.raises(RowProblem) as info:
        convert_row(get_format("openai"), row)
    assert (info.value.kind, info.value.detail) == (kind, detail)


def test_wrong_columns_for_forced_format():
    with pytest.raises(RowProblem) as info:
        convert_row(get_format("alpaca"), {"question": "q", "answer": "a"})
    assert info.value.kind == "wrong_columns"
    assert info.value.detail == "missing column(s) instruction, output for format alpaca (row has: answer, question)"


def test_undetectable_columns_name_the_row_and_the_options():
    with pytest.raises(DataError) as info:
        detect_format({"question": "q", "answer": "a"}, "data.jsonl:1")
    assert str(info.value).startswith("data.jsonl:1: cannot tell the data format from the columns (answer, question)")
    for fmt in FORMATS.values():
        assert fmt.name in str(info.value)


def test_jsonl_bad_lines_are_counted_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}, "{not json", "", {"messages": CHAT[:1]},
                                              {"messages": CHAT}])
    examples = convert_rows(read_rows(str(path), "data.path"), "auto")
    assert examples.format.name == "openai" and examples.detected
    assert len(examples.items) == 2
    assert [(p.where, p.kind) for p in examples.problems] == [
        (f"{path}:2", "bad_json"), (f"{path}:4", "no_assistant_turn")]


def test_csv_and_json_sources(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("instruction,input,output\nSay hi,,Hello.\n")
    examples = convert_rows(read_rows(str(csv_path), "data.path"), "auto")
    assert examples.format.name == "alpaca" and examples.items[0][0] == f"{csv_path}:2"
    json_path = tmp_path / "d.json"
    json_path.write_text('[{"prompt": "a", "completion": "b"}]')
    assert convert_rows(read_rows(str(json_path), "data.path"), "auto").format.name == "prompt_completion"


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["one", "two"]}), path)
    examples = convert_rows(read_rows(str(path), "data.path"), "auto")
    assert [e.text for _, e in examples.items] == ["one", "two"]


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", "", "data.path: {p}: the file is empty"),
    ("data.txt", "x", "data.path: {p}: unsupported file type .txt; use one of .jsonl, .json, .csv, .parquet, "
                      "or hf:ORG/NAME for a Hub dataset"),
])
def test_source_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_rows(str(path), "data.path")
    assert str(info.value) == message.format(p=path)


def test_registries_refuse_duplicate_names():
    from qlora_kit.data.templates import CHAT_TEMPLATES, register
    from qlora_kit.model.backends import BACKENDS

    with pytest.raises(ValueError, match="chat template 'chatml' registered twice"):
        register(CHAT_TEMPLATES["chatml"])
    assert BACKENDS.choices() == "unsloth, hf" and FORMATS.choices() == "openai, sharegpt, alpaca, " \
        "preference, openai_dpo, kto, prompt_completion, text"


LATIN1 = '{"messages": [{"role": "user", "content": "Café?"}, {"role": "assistant", "content": "Oui."}]}'.encode(
    "latin-1")  # é is the single byte 0xe9, not UTF-8


def test_jsonl_row_that_is_not_utf8_is_a_problem_not_replaced_text(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"messages": CHAT}]).read_bytes()
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + LATIN1 + b"\n" + good)
    examples = convert_rows(read_rows(str(path), "data.path"), "auto")
    offset = len(good) + LATIN1.index(b"\xe9")
    assert [(p.where, p.kind, p.detail) for p in examples.problems] == [
        (f"{path}:2", "bad_utf8", f"not valid UTF-8 (at byte offset {offset}); re-save the file as UTF-8")]
    assert [w for w, _ in examples.items] == [f"{path}:1", f"{path}:3"]
    assert all("\ufffd" not in m["content"] for _, e in examples.items for m in e.messages)


def test_json_and_csv_rows_that_are_not_utf8_name_their_line_and_byte(tmp_path):
    json_path = tmp_path / "d.json"
    json_path.write_bytes(b'[\n{"prompt": "a", "completion": "b"},\n{"prompt": "caf\xe9", "completion": "b"}\n]')
    examples = convert_rows(read_rows(str(json_path), "data.path"), "auto")
    assert len(examples.items) == 1 and [(p.where, p.kind, p.detail) for p in examples.problems] == [
        (f"{json_path}[1]", "bad_utf8", "not valid UTF-8 (at line 3, byte offset 53); re-save the file as UTF-8")]
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b"instruction,output\nSay hi,Hello.\nSay caf\xe9,Caf\xe9.\nBye,Bye.\n")
    examples = convert_rows(read_rows(str(csv_path), "data.path"), "auto")
    assert [w for w, _ in examples.items] == [f"{csv_path}:2", f"{csv_path}:4"]
    assert [(p.where, p.detail) for p in examples.problems] == [
        (f"{csv_path}:3", "not valid UTF-8 (at line 3, byte offset 40); re-save the file as UTF-8")]
    csv_path.write_bytes(b"instructi\xf3n,output\nSay hi,Hello.\n")
    with pytest.raises(DataError, match=r"d\.csv:1: not valid UTF-8 \(at byte offset 9\); .* \(in the header\)"):
        read_rows(str(csv_path), "data.path")


@pytest.mark.parametrize("suffix, body", [
    (".jsonl", b'{"prompt": "a", "completion": "b"}\n'),
    (".json", b'[{"prompt": "a", "completion": "b"}]'),
    (".csv", b"prompt,completion\na,b\n"),
])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, suffix, body):
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body)  # what Windows editors write at the start of a UTF-8 file
    examples = convert_rows(read_rows(str(path), "data.path"), "auto")
    assert examples.problems == [] and examples.format.name == "prompt_completion"
    assert [e.messages for _, e in examples.items] == [[{"role": "user", "content": "a"},
                                                         {"role": "assistant", "content": "b"}]]


def test_on_bad_rows_skip_drops_the_rows_and_says_which(tmp_path, capsys):
    from qlora_kit.data.prepare import load_examples
    from qlora_kit.recipe.schema import DataSection

    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}, "{oops", {"messages": CHAT}, {"messages": CHAT}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: bad JSON"):
        load_examples(DataSection(path=str(path)), seed=0)  # the default is on_bad_rows: error
    notes: list[str] = []
    train, _, _ = load_examples(DataSection(path=str(path), on_bad_rows="skip"), seed=0, notes=notes)
    assert sorted(w for w, _ in train) == [f"{path}:1", f"{path}:3", f"{path}:4"]
    expected = (f"data.on_bad_rows is skip: skipped 1 of 4 rows of {path}: {path}:2 (bad JSON (Expecting property "
                "name enclosed in double quotes at column 2))")
    assert notes == [expected]
    assert capsys.readouterr().err == f"qlora-kit: warning: {expected}\n"
