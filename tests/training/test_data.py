"""Loading Alpaca-format data: the published files load, and broken ones say where they broke."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alpaca_serve.core.records import RawRecord, read_raw_records
from alpaca_serve.evaluation.datasets import ALPACA_SAMPLE
from alpaca_serve.training.data import AlpacaRecord, DataFormatError, load_records
from tests.support import ROOT


def test_stanford_sample_loads_all_200_records_as_published():
    records = load_records(ALPACA_SAMPLE)

    assert len(records) == 200
    assert records[0] == AlpacaRecord(
        instruction="Give three tips for staying healthy.",
        input="",
        output="1.Eat a balanced diet and make sure to include plenty of fruits and vegetables. "
        "\n2. Exercise regularly to keep your body active and strong. \n3. Get enough sleep and "
        "maintain a consistent sleep schedule.",
    )
    assert sum(1 for r in records if r.input) == 118
    # The data README's "record 9" counts from 1; the output begins with the marker.
    assert records[8].output.startswith("<nooutput>")


def test_json_lines_load_with_input_defaulting_to_empty_and_extra_keys_ignored(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text(
        json.dumps({"instruction": "Say hi.", "output": "Hi!", "rating": "up"})
        + "\n\n"
        + json.dumps({"instruction": "Echo.", "input": "ping", "output": ""})
        + "\n",
        encoding="utf-8",
    )

    assert load_records(path) == [
        AlpacaRecord("Say hi.", "", "Hi!"),
        AlpacaRecord("Echo.", "ping", ""),
    ]


def test_a_byte_order_mark_does_not_break_a_json_list(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "a", "output": "b"}]).encode())

    assert load_records(path) == [AlpacaRecord("a", "", "b")]


GOOD = {"instruction": "Name a colour.", "input": "", "output": "Red."}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "missing.json",
            [GOOD, GOOD, {"input": "", "output": "x"}],
            "record 2: 'instruction' is missing",
        ),
        ("empty.json", [GOOD, {**GOOD, "instruction": "  "}], "record 1: 'instruction' is empty"),
        (
            "number.json",
            [{**GOOD, "instruction": 7}],
            "record 0: 'instruction' must be a string, got a number",
        ),
        (
            "null.json",
            [GOOD, {**GOOD, "input": None}],
            "record 1: 'input' must be a string, got null",
        ),
        ("no_output.json", [{"instruction": "x"}], "record 0: 'output' is missing"),
        (
            "list_output.json",
            [{**GOOD, "output": ["a"]}],
            "record 0: 'output' must be a string, got a list",
        ),
        (
            "not_object.json",
            [GOOD, ["Name a colour.", "", "Red."]],
            "record 1: expected an object, got a list",
        ),
        ("nothing.json", [], "no records"),
    ],
)
def test_a_bad_record_in_a_json_list_is_named_by_its_index(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(json.dumps(content, indent=2), encoding="utf-8")

    with pytest.raises(DataFormatError) as raised:
        load_records(path)

    assert str(raised.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [json.dumps(GOOD), "", '{"instruction": "x", "output": '],
            "record 1 (line 3): not valid JSON at column",
        ),
        (
            [json.dumps(GOOD), json.dumps({"instruction": "x"})],
            "record 1 (line 2): 'output' is missing",
        ),
        (["", "", "42"], "record 0 (line 3): expected an object, got a number"),
        (["{", '  "instruction": "x"', "}"], "record 0 (line 1): not valid JSON"),
        (["", "   "], "no records"),
    ],
)
def test_a_bad_record_in_json_lines_is_named_by_its_index_and_line(tmp_path, lines, message):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(DataFormatError) as raised:
        load_records(path)

    assert str(raised.value).startswith(f"{path}: {message}")


def test_a_truncated_json_list_names_the_line_and_column(tmp_path):
    path = tmp_path / "truncated.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": ', "utf-8")

    with pytest.raises(DataFormatError, match=r"truncated\.json: not valid JSON at line 3, column"):
        load_records(path)


def test_a_file_that_is_not_utf8_is_refused_with_its_name(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"instruction": "café", "output": "x"}]'.encode("latin-1"))

    with pytest.raises(DataFormatError, match=r"latin1\.json: not UTF-8 text"):
        load_records(path)


def test_the_raw_reader_gives_a_json_lists_objects_unchecked_with_their_index(tmp_path):
    path = tmp_path / "self_instruct.json"
    items = [
        {"instruction": "Sort.", "instances": [{"input": "b a", "output": "a b"}]},
        {"id": 7, "anything": None},
    ]
    path.write_text(json.dumps(items), encoding="utf-8")

    assert list(read_raw_records(path)) == [
        RawRecord(f"{path}: record 0", items[0]),
        RawRecord(f"{path}: record 1", items[1]),
    ]


def test_the_raw_reader_gives_json_lines_with_their_line_and_skips_blank_ones(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('\n{"response": "Hi"}\n   \n{"output": "Yo"}\n\n', encoding="utf-8")

    assert list(read_raw_records(path)) == [
        RawRecord(f"{path}: record 0 (line 2)", {"response": "Hi"}),
        RawRecord(f"{path}: record 1 (line 4)", {"output": "Yo"}),
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("lines.jsonl", '{"a": 1}\n\n{"a": 2\n', "record 1 (line 3): not valid JSON at column 8"),
        (
            "lines.jsonl",
            '{"a": 1}\n"just text"\n',
            "record 1 (line 2): expected an object, got a string",
        ),
        ("list.json", '[{"a": 1}, null]', "record 1: expected an object, got null"),
        ("list.json", '[{"a": 1},\n {"a": ]', "not valid JSON at line 2, column 8"),
        ("blank.jsonl", "\n  \n", "no records"),
    ],
)
def test_the_raw_reader_names_the_file_and_line_of_a_bad_item_in_one_line(
    tmp_path, name, text, message
):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    with pytest.raises(DataFormatError) as raised:
        list(read_raw_records(path))

    assert str(raised.value).startswith(f"{path}: {message}")
    assert "\n" not in str(raised.value)


def test_the_raw_reader_can_hand_bad_items_over_and_read_on(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"a": 1}\nnot json\n[1]\n{"a": 2}\n', encoding="utf-8")
    invalid = []

    fields = [raw.fields for raw in read_raw_records(path, on_invalid=invalid.append)]

    assert fields == [{"a": 1}, {"a": 2}]
    assert [str(err).split(": ")[1] for err in invalid] == [
        "record 1 (line 2)",
        "record 2 (line 3)",
    ]


def test_loading_data_imports_no_torch():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, alpaca_serve.training.data; print('torch' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
