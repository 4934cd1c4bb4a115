"""GRPO graders (qlora_kit.graders): every built-in type with exact scores, python graders in their worker, custom
TRL-style functions by module:function and by entry point, every load error's one line, the run-time errors
(raise, hang, non-number, wrong length, network), and the reward functions called the way TRL calls them."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qlora_kit.errors import DataError, UsageError
from qlora_kit.graders import GRADER_TYPES, GraderError, load_graders

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets" / "graders"
PLUGINS = ROOT / "tests" / "plugins"
OUT, ANSWER = "{{sample.output_text}}", "{{item.answer}}"


def score_one(spec: dict, completions: list[str], items: list[dict], base_dir: Path = ASSETS) -> list[float]:
    with load_graders([spec], base_dir) as graders:
        return graders.score(completions, items, [f"data.jsonl:{i + 1}" for i in range(len(completions))])[
            graders.names[0]]


def load_error(specs, base_dir: Path = ASSETS) -> str:
    with pytest.raises(UsageError) as info:
        load_graders(specs, base_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- built-in types

@pytest.mark.parametrize("operation, expected", [
    ("eq", [1.0, 0.0, 0.0, 0.0]), ("ne", [0.0, 1.0, 1.0, 1.0]),
    ("like", [1.0, 1.0, 0.0, 0.0]), ("ilike", [1.0, 1.0, 1.0, 0.0])])
def test_string_check_operations(operation, expected):
    completions = ["Paris", "It is Paris.", "PARIS", "Lyon"]
    spec = {"type": "string_check", "input": OUT, "reference": ANSWER, "operation": operation}
    assert score_one(spec, completions, [{"answer": "Paris"}] * 4) == expected


def test_templates_nested_fields_literals_and_missing_sample_fields():
    spec = {"type": "string_check", "input": "{{sample.output_json.city}} in {{ item.meta.countries[1] }}",
            "reference": "Paris in {{item.meta.countries.1}}", "operation": "eq"}
    items = [{"meta": {"countries": ["Italy", "France"]}}] * 3
    # not JSON, or JSON without the key: the sample field is missing and the completion scores 0.0
    assert score_one(spec, ['{"city": "Paris"}', "Paris", '{"town": "Paris"}'], items) == [1.0, 0.0, 0.0]
    literal = {"type": "string_check", "input": OUT, "reference": "yes", "operation": "eq"}
    assert score_one(literal, ["yes", "no"], [{}, {}]) == [1.0, 0.0]


def test_fuzzy_match_is_difflib_ratio():
    a, b = "2033-03-30", "2033-03-03"
    # SequenceMatcher's ratio is 2 * M / T: "2033-03-" (8) then "3" (1) match, M = 9, T = 20
    assert difflib.SequenceMatcher(None, a, b).ratio() == 2 * 9 / 20
    spec = {"type": "text_similarity", "input": OUT, "reference": ANSWER, "evaluation_metric": "fuzzy_match"}
    assert score_one(spec, [a, b], [{"answer": b}] * 2) == [0.9, 1.0]


def test_rouge_and_gleu_by_hand():
    hyp, ref = "The cat sat on the mat", "the cat is on the mat"
    scores = {}
    for metric in ("rouge_1", "rouge_2", "rouge_l", "rouge_5", "gleu"):
        spec = {"type": "text_similarity", "input": OUT, "reference": ANSWER, "evaluation_metric": metric}
        scores[metric] = score_one(spec, [hyp, "a b c"], [{"answer": ref}, {"answer": "a b d"}])
    # unigrams (lower-cased): the x2, cat, on, mat shared = 5 of 6 each side -> P = R = F1 = 5/6
    assert scores["rouge_1"][0] == pytest.approx(5 / 6)
    # bigrams: the-cat, on-the, the-mat shared = 3 of 5 each side -> 3/5
    assert scores["rouge_2"][0] == pytest.approx(3 / 5)
    # longest common subsequence "the cat on the mat" = 5 of 6 each side
    assert scores["rouge_l"][0] == pytest.approx(5 / 6)
    assert scores["rouge_5"] == [0.0, 0.0]  # no shared 5-gram; "a b c" has none at all
    # GLEU: 1..4-grams a, b, c, ab, bc, abc vs a, b, d, ab, bd, abd: 3 shared of 6
    assert scores["gleu"][1] == pytest.approx(3 / 6)


def test_bleu_and_chrf_are_sacrebleu_sentence_scores():
    import sacrebleu

    hyp, ref = "the meeting is on 3 March 2033", "the meeting is on 3rd March 2033"
    for metric, official in (("bleu", sacrebleu.sentence_bleu), ("chrf", sacrebleu.sentence_chrf)):
        spec = {"type": "text_similarity", "input": OUT, "reference": ANSWER, "evaluation_metric": metric}
        got = score_one(spec, [hyp, ref], [{"answer": ref}] * 2)
        assert got[0] == pytest.approx(official(hyp, [ref]).score / 100, abs=1e-12)
        assert 0 < got[0] < 1 and got[1] == 1.0


def test_pass_threshold_makes_the_score_pass_fail():
    spec = {"type": "text_similarity", "input": OUT, "reference": ANSWER, "evaluation_metric": "fuzzy_match",
            "pass_threshold": 0.9}
    # ratios 0.9 (see above), 0.8 (only "2033-03-" matches: 2 * 8 / 20) and 1.0
    completions = ["2033-03-30", "2033-03-44", "2033-03-03"]
    assert difflib.SequenceMatcher(None, completions[1], "2033-03-03").ratio() == 0.8
    assert score_one(spec, completions, [{"answer": "2033-03-03"}] * 3) == [1.0, 0.0, 1.0]


def test_multi_formula():
    spec = {"type": "multi", "name": "total", "calculate_output": "0.7 * exact + 0.3 * fmt - min(exact, 0.1) / 2",
            "graders": {"exact": {"type": "string_check", "input": "{{item.answer}}",
                                  "reference": "{{sample.output_json.answer}}", "operation": "eq"},
                        "fmt": {"type": "json_schema", "schema": {"type": "object", "required": ["answer"]}}}}
    completions = ['{"answer": "42"}', '{"answer": "41"}', "42"]
    assert score_one(spec, completions, [{"answer": "42"}] * 3) == pytest.approx([0.95, 0.3, 0.0])
    spec = {"type": "multi", "calculate_output": "sqrt(a) + log(exp(2)) + floor(1.7) + ceil(0.2) + abs(-a) ** 2",
            "graders": {"a": {"type": "tags", "tag": "answer"}}}
    assert score_one(spec, ["<answer>x</answer>", "x"], [{}, {}]) == pytest.approx([6.0, 4.0])


def test_tags_with_and_without_reference():
    plain = {"type": "tags", "tag": "answer"}
    checked = {"type": "tags", "tag": "answer", "reference": ANSWER}
    completions = ["think... <answer> 42 </answer>", "<answer>41</answer>", "<answer>  </answer>", "42",
                   "<answer>42</answer><answer>42</answer>", "</answer>42<answer>", "<answer>42"]
    items = [{"answer": "42"}] * len(completions)
    assert score_one(plain, completions, items) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert score_one(checked, completions, items) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_json_schema_inline_and_file():
    completions = ['{"date": "2033-03-03"}', '```json\n{"date": "2033-03-03"}\n```', '  {"date": "3 March"}',
                   '{"date": "2033-03-03", "extra": 1}', "2033-03-03", '```json\n{"date": "2033-03-03"}']
    expected = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert score_one({"type": "json_schema", "schema_file": "answer_schema.json"}, completions,
                     [{}] * 6) == expected
    schema = json.loads((ASSETS / "answer_schema.json").read_text())
    assert score_one({"type": "json_schema", "schema": schema}, completions, [{}] * 6) == expected


# ---------------------------------------------------------------------------------------------- python graders

def test_python_graders_inline_and_file_share_one_worker_per_grader():
    source = textwrap.dedent("""\
        import os

        def grade(sample, item) -> float:
            print("graders may print: it goes to stderr")
            return float(sample["output_text"] == item["answer"]) + os.getpid() * 0
        """)
    specs = [{"type": "python", "name": "inline", "source": source},
             {"type": "python", "name": "file", "file": "score_dates.py", "function": "grade_date"},
             {"type": "python", "name": "pid", "source": "import os\ndef grade(sample, item):\n    return os.getpid()"}]
    completions = ["2033-03-03", "2033-04-01", "1999-03-03", "2033-03-03"]
    with load_graders(specs, ASSETS) as graders:
        scores = graders.score(completions, [{"answer": "2033-03-03"}] * 4, [f"d:{i}" for i in range(4)])
        again = graders.score(completions[:2], [{"answer": "2033-03-03"}] * 2, ["d:0", "d:1"])
    assert scores["inline"] == [1.0, 0.0, 0.0, 1.0]
    assert scores["file"] == [1.0, 0.5, 0.0, 1.0]
    pids = set(scores["pid"]) | set(again["pid"])
    assert len(pids) == 1 and pids != {float(os.getpid())}  # one worker process, used for both batches


def test_python_grader_that_raises_or_returns_a_string():
    source = textwrap.dedent("""\
        def grade(sample, item):
            if sample["output_text"] == "text":
                return "yes"
            if sample["output_text"] == "nan":
                return float("nan")
            if sample["output_text"] == "stdin":
                return float(input())  # stdin is /dev/null in the worker, not the protocol
            return 1 / int(sample["output_text"])
        """)
    with load_graders([{"type": "python", "name": "exact_py", "source": source}], ASSETS) as graders:
        def error(completion: str) -> str:
            with pytest.raises(GraderError) as info:
                graders.score(["1", completion], [{}, {}], ["data.jsonl:11", "data.jsonl:12"])
            assert isinstance(info.value, DataError)
            assert (info.value.grader, info.value.row) == ("exact_py", "data.jsonl:12")
            return str(info.value)

        assert error("0") == ("grader 'exact_py' (python) on row data.jsonl:12: raised ZeroDivisionError: division "
                              "by zero")
        assert error("text") == "grader 'exact_py' (python) on row data.jsonl:12: returned 'yes' (str), not a number"
        assert error("nan") == "grader 'exact_py' (python) on row data.jsonl:12: returned nan, not a finite number"
        assert error("stdin") == ("grader 'exact_py' (python) on row data.jsonl:12: raised EOFError: EOF when "
                                  "reading a line")
        assert graders.score(["4"], [{}], ["data.jsonl:1"]) == {"exact_py": [0.25]}  # the worker goes on


def test_python_grader_timeout_names_the_row_and_the_worker_restarts():
    source = ("import time\ndef grade(sample, item):\n    if sample['output_text'] == 'hang':\n        time.sleep(60)\n"
              "    return 1.0\n")
    with load_graders([{"type": "python", "name": "slow", "source": source, "timeout": 1}], ASSETS) as graders:
        graders.score(["ok"], [{}], ["data.jsonl:1"])  # the worker is up
        start = time.monotonic()
        with pytest.raises(GraderError) as info:
            graders.score(["ok", "hang", "ok"], [{}] * 3, ["data.jsonl:11", "data.jsonl:12", "data.jsonl:13"])
        assert time.monotonic() - start < 4
        assert str(info.value) == "grader 'slow' (python) on row data.jsonl:12: timed out after 1 s"
        assert graders.score(["ok", "ok"], [{}] * 2, ["data.jsonl:1", "data.jsonl:2"]) == {"slow": [1.0, 1.0]}


def test_python_grader_has_no_network():
    source = textwrap.dedent("""\
        import socket

        def grade(sample, item):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
            return 1.0

        def grade_raw(sample, item):
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            return 1.0
        """)
    specs = [{"type": "python", "name": "net", "source": source},
             {"type": "python", "name": "raw", "source": source, "function": "grade_raw"}]
    with load_graders(specs, ASSETS) as graders:
        for name in ("net", "raw"):
            with pytest.raises(GraderError) as info:
                graders.graders[graders.names.index(name)].score(_batch(["x"], [{}], ["data.jsonl:3"]))
            assert str(info.value) == (f"grader '{name}' (python) on row data.jsonl:3: raised PermissionError: "
                                       "network is off in python graders")


def test_python_grader_code_that_fails_to_load():
    source = "import no_such_module_qk\ndef grade(s, i):\n    return 1"
    with load_graders([{"type": "python", "name": "imp", "source": source}], ASSETS) as graders:
        with pytest.raises(GraderError) as info:
            graders.score(["x"], [{}], ["data.jsonl:1"])
    assert str(info.value) == ("grader 'imp' (python): its code failed to load: ModuleNotFoundError: No module "
                               "named 'no_such_module_qk'")


def test_python_worker_dies_with_its_parent(tmp_path):
    script = textwrap.dedent(f"""\
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from qlora_kit.graders import load_graders
        graders = load_graders([{{"type": "python", "source": "def grade(s, i):\\n    return 1.0"}}], {str(tmp_path)!r})
        graders.score(["x"], [{{}}], ["r:1"])
        print(graders.graders[0]._proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _batch(completions, items, wheres):
    from qlora_kit.graders.base import Batch

    return Batch(completions, items, wheres)


# ---------------------------------------------------------------------------------------------- function graders

@pytest.fixture()
def rewards_module():
    """qk_grader_rewards, imported by the grader from the base directory; forgotten afterwards."""
    yield
    sys.modules.pop("qk_grader_rewards", None)


def test_function_grader_module_function(rewards_module):
    with load_graders([{"type": "function", "function": "qk_grader_rewards:match_reward"}], ASSETS) as graders:
        assert graders.names == ["match_reward"] and str(ASSETS) not in sys.path  # imported, path put back
        items = [{"answer": "42", "prompt": "q1"}, {"answer": "7", "prompt": "q2", "extra": 1}]
        assert graders.score([" 42\n", "8"], items, ["d:1", "d:2"]) == {"match_reward": [1.0, 0.0]}
        calls = sys.modules["qk_grader_rewards"].match_reward.calls
        assert calls[-1] == {"prompts": ["q1", "q2"], "completions": [" 42\n", "8"], "answer": ["42", "7"],
                             "keys": ["extra", "prompt"]}  # a column per item field; None where a row lacks it
        graders.score(["42"], [{"answer": "42"}], ["d:1"], prompts=["given"])
        assert calls[-1]["prompts"] == ["given"]


def test_function_grader_run_time_errors(rewards_module):
    specs = [{"type": "function", "name": "judge", "function": "qk_grader_rewards:says_yes"},
             {"type": "function", "function": "qk_grader_rewards:too_few"},
             {"type": "function", "function": "qk_grader_rewards:raises"}]
    with load_graders(specs, ASSETS) as graders:
        messages, rows = [], []
        for grader in graders.graders:
            with pytest.raises(GraderError) as info:
                grader.score(_batch(["a", "b", "c"], [{}] * 3, ["data.jsonl:3", "data.jsonl:4", "data.jsonl:5"]))
            messages.append(str(info.value))
            rows.append(info.value.row)
    assert rows == ["data.jsonl:3", "data.jsonl:3 .. data.jsonl:5 (3 rows)", "data.jsonl:3 .. data.jsonl:5 (3 rows)"]
    assert messages == [
        "grader 'judge' (function qk_grader_rewards:says_yes) on row data.jsonl:3: returned 'yes' (str), not a number",
        "grader 'too_few' (function qk_grader_rewards:too_few) on rows data.jsonl:3 .. data.jsonl:5 (3 rows): "
        "returned 2 scores for 3 completions",
        "grader 'raises' (function qk_grader_rewards:raises) on rows data.jsonl:3 .. data.jsonl:5 (3 rows): raised "
        "KeyError: 'answer'"]


def test_function_grader_by_entry_point(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))  # "installs" tests/plugins (invalidates the import caches)
    try:
        found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="qlora_kit.rewards")}
        assert found == {"short": "qk_test_plugin:short_answer_reward"}
        with load_graders([{"type": "function", "function": "short"}], ASSETS) as graders:
            assert graders.describe() == [{"name": "short", "type": "function"}]
            assert graders.score(["2033-03-03", "the third of March"], [{}, {}], ["d:1", "d:2"]) == {
                "short": [1.0, 0.0]}
        assert load_error([{"type": "function", "function": "shrot"}]) == (
            "grpo.graders[0] (function 'shrot'): no reward function 'shrot' in entry point group qlora_kit.rewards "
            "(available: short); or name one as module:function")
    finally:
        sys.modules.pop("qk_test_plugin", None)


# ---------------------------------------------------------------------------------------------- TRL's calls

def test_reward_functions_called_the_way_trl_calls_them(rewards_module):
    specs = [{"type": "string_check", "name": "exact", "input": OUT, "reference": ANSWER, "operation": "eq"},
             {"type": "python", "name": "py_len",
              "source": "def grade(sample, item):\n    return len(sample['output_text'])"},
             {"type": "function", "function": "qk_grader_rewards:last_message_length"}]
    items = [{"answer": "2033-03-03", "messages": []}, {"answer": "2034-01-01", "messages": []}]
    with load_graders(specs, ASSETS) as graders:
        rewards = graders.reward_functions()
        assert [f.__name__ for f in rewards] == ["exact", "py_len", "last_message_length"]
        completions = [[{"role": "assistant", "content": "2033-03-03"}],
                       [{"role": "assistant", "content": "no idea"}]]
        kwargs = dict(prompts=[[{"role": "user", "content": "When?"}]] * 2, completions=completions,
                      completion_ids=[[1, 2], [3]], trainer_state=None, log_extra=lambda *a: None,
                      log_metric=lambda *a: None, answer=["2033-03-03", "2034-01-01"],
                      item_json=[json.dumps(item) for item in items], row_where=["data.jsonl:1", "data.jsonl:2"])
        assert [f(**kwargs) for f in rewards] == [[1.0, 0.0], [10.0, 7.0], [10.0, 7.0]]
        plain = {**kwargs, "completions": ["2033-03-03", "x"], "prompts": ["When?"] * 2}
        assert rewards[0](**plain) == [1.0, 0.0] and rewards[1](**plain) == [10.0, 1.0]
        with pytest.raises(GraderError) as info:
            graders.reward_functions()[0](**{**plain, "item_json": [json.dumps({"answer": "x"}), "{}"]})
    assert str(info.value) == ("grader 'exact' (string_check) on row data.jsonl:2: the row has no field 'answer' "
                               "(template {{item.answer}})")


# ---------------------------------------------------------------------------------------------- names, errors

def test_default_names_describe_and_types():
    check = {"type": "string_check", "input": OUT, "reference": ANSWER, "operation": "eq"}
    with load_graders([check, {**check, "name": "string_check_2"}, check, {"type": "tags", "tag": "a"}],
                      ASSETS) as graders:
        assert graders.names == ["string_check", "string_check_2", "string_check_3", "tags"]
        assert graders.describe()[3] == {"name": "tags", "type": "tags"}
    assert GRADER_TYPES == ("string_check", "text_similarity", "python", "multi", "tags", "json_schema", "function")


def test_multi_run_time_error_names_the_row():
    spec = {"type": "multi", "name": "m", "graders": {"a": {"type": "tags", "tag": "answer"}},
            "calculate_output": "log(a)"}
    with load_graders([spec], ASSETS) as graders:
        with pytest.raises(GraderError) as info:
            graders.score(["<answer>1</answer>", "none"], [{}, {}], ["data.jsonl:1", "data.jsonl:2"])
    assert str(info.value) == ("grader 'm' (multi) on row data.jsonl:2: calculate_output raised ValueError: math "
                               "domain error")


S = {"type": "string_check", "input": OUT, "reference": ANSWER, "operation": "eq"}
M = {"type": "multi", "name": "m", "graders": {"a": S}}
TAIL = "use + - * / **, parentheses, numbers, the sub-grader names and min, max, abs, sqrt, log, exp, floor, ceil"
KNOWN = "known types: string_check, text_similarity, python, multi, tags, json_schema, function"
METRICS = "fuzzy_match, bleu, gleu, rouge_1, rouge_2, rouge_3, rouge_4, rouge_5, rouge_l, chrf"


@pytest.mark.parametrize("specs, message", [
    ("nope", "grpo.graders: expected a list of graders, got str"),
    ([], "grpo.graders: no graders; give at least one, e.g. {type: string_check, input: '{{sample.output_text}}', "
         "reference: '{{item.answer}}', operation: eq}"),
    (["x"], "grpo.graders[0]: expected a mapping with a 'type', got str"),
    ([S, {"type": "regex"}], f"grpo.graders[1]: unknown type 'regex'; {KNOWN}"),
    ([{"type": "string-check"}],
     f"grpo.graders[0]: unknown type 'string-check' (did you mean 'string_check'?); {KNOWN}"),
    ([{"name": "a"}], f"grpo.graders[0]: missing field 'type'; {KNOWN}"),
    ([{**S, "name": "exact", "reference": None}], "grpo.graders[0] (string_check 'exact'): field 'reference' "
                                                     "must be a string, got NoneType"),
    ([{k: v for k, v in S.items() if k != "reference"} | {"name": "exact"}],
     "grpo.graders[0] (string_check 'exact'): missing field 'reference'"),
    ([{**S, "operation": "contains"}],
     "grpo.graders[0] (string_check 'string_check'): unknown operation 'contains'; valid: eq, ne, like, ilike"),
    ([{**S, "refrence": "x"}], "grpo.graders[0] (string_check 'string_check'): unknown field 'refrence' (did you "
                               "mean 'reference'?); string_check takes input, name, operation, reference, type"),
    ([{**S, "name": "a"}, {**S, "name": "a"}],
     "grpo.graders[1] (string_check 'a'): the name 'a' is already grpo.graders[0]'s; give each grader its own name"),
    ([{**S, "input": "{{foo.bar}}"}], "grpo.graders[0] (string_check 'string_check'): input: unknown template "
     "{{foo.bar}}; use {{sample.output_text}}, {{sample.output_json.KEY}} or {{item.FIELD}} (dotted for nested "
     "fields)"),
    ([{**S, "reference": "{{item.answer"}],
     "grpo.graders[0] (string_check 'string_check'): reference: unclosed {{ in '{{item.answer'"),
    ([{"type": "text_similarity", "name": "close", "input": OUT, "reference": ANSWER, "evaluation_metric": "cosine"}],
     "grpo.graders[0] (text_similarity 'close'): evaluation_metric 'cosine' needs an embedding model, which "
     f"qlora-kit does not run; use one of {METRICS}, or a python grader"),
    ([{"type": "text_similarity", "input": OUT, "reference": ANSWER, "evaluation_metric": "meteor"}],
     "grpo.graders[0] (text_similarity 'text_similarity'): evaluation_metric 'meteor' needs NLTK's WordNet data, "
     f"which qlora-kit does not ship; use one of {METRICS}, or a python grader"),
    ([{"type": "text_similarity", "input": OUT, "reference": ANSWER, "evaluation_metric": "rouge_9"}],
     f"grpo.graders[0] (text_similarity 'text_similarity'): unknown evaluation_metric 'rouge_9' (did you mean "
     f"'rouge_l'?); valid: {METRICS}"),
    ([{**M, "calculate_output": "a // 2"}],
     f"grpo.graders[0] (multi 'm'): calculate_output 'a // 2': '//' is not supported; {TAIL}"),
    ([{**M, "calculate_output": "a.real"}],
     f"grpo.graders[0] (multi 'm'): calculate_output 'a.real': 'a.real' is not supported; {TAIL}"),
    ([{**M, "calculate_output": "pow(a, 2)"}],
     f"grpo.graders[0] (multi 'm'): calculate_output 'pow(a, 2)': function 'pow' is not supported; {TAIL}"),
    ([{**M, "calculate_output": "a + b"}],
     f"grpo.graders[0] (multi 'm'): calculate_output 'a + b': unknown name 'b' (the sub-graders are a); {TAIL}"),
    ([{**M, "calculate_output": "__import__('os')"}],
     f"grpo.graders[0] (multi 'm'): calculate_output \"__import__('os')\": function '__import__' is not supported; "
     f"{TAIL}"),
    ([{**M, "calculate_output": "0.5 * (a +"}],
     "grpo.graders[0] (multi 'm'): calculate_output '0.5 * (a +' is not a formula"),
    ([{**M, "graders": {"a": S, "b": {"type": "string_check", "input": OUT, "reference": ANSWER}},
       "calculate_output": "a"}], "grpo.graders[0].graders.b (string_check 'm.b'): missing field 'operation'"),
    ([{"type": "python", "name": "py", "file": "nope.py"}],
     f"grpo.graders[0] (python 'py'): file nope.py not found (looked for {ASSETS / 'nope.py'})"),
    ([{"type": "python", "name": "py", "source": "def grade(sample, item)\n    return 1"}],
     "grpo.graders[0] (python 'py'): source: line 1: SyntaxError: expected ':'"),
    ([{"type": "python", "name": "py", "file": "score_dates.py"}], "grpo.graders[0] (python 'py'): file "
     "score_dates.py defines no function 'grade' at its top level; write def grade(sample, item) -> float"),
    ([{"type": "python", "name": "py"}], "grpo.graders[0] (python 'py'): give one of 'source' (code defining "
     "grade(sample, item)) or 'file' (a .py file)"),
    ([{"type": "python", "source": "def grade(s, i): return 1", "timeout": 0}],
     "grpo.graders[0] (python 'python'): field 'timeout' must be > 0, got 0"),
    ([{"type": "function", "function": "qk_no_such_mod:judge"}], "grpo.graders[0] (function 'judge'): cannot "
     "import qk_no_such_mod:judge: ModuleNotFoundError: No module named 'qk_no_such_mod'"),
    ([{"type": "function", "function": "date_helpers:nope"}], "grpo.graders[0] (function 'nope'): cannot import "
     "date_helpers:nope: AttributeError: module 'date_helpers' has no attribute 'nope'"),
    ([{"type": "function", "function": "no_such_reward"}], "grpo.graders[0] (function 'no_such_reward'): no reward "
     "function 'no_such_reward' in entry point group qlora_kit.rewards (available: none installed); or name one as "
     "module:function"),
    ([{"type": "score_model", "name": "judge", "model": "gpt-4o", "input": []}],
     "grpo.graders[0] (score_model 'judge'): score_model needs a judge model, which qlora-kit does not run; grade "
     "with a python grader (your own scoring code) or text_similarity"),
    ([{"type": "tags", "tag": "<answer>"}],
     "grpo.graders[0] (tags 'tags'): tag '<answer>' is not a tag name (write answer for <answer>...</answer>)"),
    ([{"type": "json_schema", "schema": {"type": "objekt"}}], "grpo.graders[0] (json_schema 'json_schema'): the "
     "schema is not valid: 'objekt' is not valid under any of the given schemas"),
    ([{"type": "json_schema"}],
     "grpo.graders[0] (json_schema 'json_schema'): give one of 'schema' (inline) or 'schema_file' (a JSON file)"),
])
def test_load_errors_are_one_line(specs, message):
    try:
        assert load_error(specs) == message
    finally:
        sys.modules.pop("date_helpers", None)


def test_python_worker_crash_is_one_line_and_the_next_call_restarts_it():
    source = ("import os\ndef grade(sample, item):\n    if sample['output_text'] == 'die':\n        os._exit(3)\n"
              "    return 2\n")
    with load_graders([{"type": "python", "name": "fragile", "source": source}], ASSETS) as graders:
        with pytest.raises(GraderError) as info:
            graders.score(["ok", "die"], [{}, {}], ["data.jsonl:1", "data.jsonl:2"])
        assert str(info.value) == ("grader 'fragile' (python) on row data.jsonl:2: the worker process died (exit "
                                   "code 3); it restarts on the next call")
        assert graders.score(["ok"], [{}], ["data.jsonl:1"]) == {"fragile": [2.0]}


def test_importing_the_graders_is_cheap():
    code = ("import sys, qlora_kit.graders; heavy = {'torch', 'transformers', 'sacrebleu', 'jsonschema', 'numpy'}; "
            "print(sorted(heavy & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
