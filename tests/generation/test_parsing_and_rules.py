"""Reading a teacher's answer and the rules a task must pass: Alpaca's recipe, and its defects."""

from __future__ import annotations

import hashlib
import json

import pytest

from alpaca_serve.generation.parsing import Task, parse_answer, parse_item
from alpaca_serve.generation.recipe import (
    PROMPT_TEMPLATE,
    SEED_TASKS,
    RecipeError,
    SeedTask,
    encode_prompt,
    load_seed_tasks,
    sample_examples,
)
from alpaca_serve.generation.rules import REASONS, check_task

# SHA-256 of stanford_alpaca's prompt.txt (1,751 bytes), the request Alpaca's data was made with.
ALPACA_PROMPT_SHA256 = "ed519a72953a3b65e16990e1e0fe34d24aa380c5852b0eb9edb59b4d25bf9316"


def task(instruction: str, input: str = "", output: str = "An answer.") -> Task:
    return Task(instruction, input, output)


# --- the recipe ----------------------------------------------------------------------------


def test_the_shipped_request_and_seeds_are_alpacas():
    assert hashlib.sha256(PROMPT_TEMPLATE.read_bytes()).hexdigest() == ALPACA_PROMPT_SHA256
    seeds = load_seed_tasks()
    assert len(seeds) == 175 and len({seed.id for seed in seeds}) == 175
    assert seeds[1] == SeedTask(
        "seed_task_1",
        "What is the relation between the given pairs?",
        "Night : Day :: Right : Left",
        "The relation between the given pairs is that they are opposites.",
    )


def test_a_request_shows_three_numbered_examples_and_asks_for_the_fourth():
    examples = [
        SeedTask("a", "Name  a\ncolour:", "", "Red."),
        SeedTask("b", "Add the numbers.", "2, 3", "5"),
        SeedTask("c", "Say hi.", "", "Hi."),
    ]
    prompt = encode_prompt(examples)
    assert prompt == PROMPT_TEMPLATE.read_text() + (
        "\n###\n1. Instruction: Name a colour\n1. Input:\n<noinput>\n1. Output:\nRed.\n"
        "###\n2. Instruction: Add the numbers.\n2. Input:\n2, 3\n2. Output:\n5\n"
        "###\n3. Instruction: Say hi.\n3. Input:\n<noinput>\n3. Output:\nHi.\n"
        "###\n4. Instruction:"
    )


def test_a_request_shows_the_same_seeds_whatever_the_order_requests_run_in():
    seeds = load_seed_tasks()
    forward = [sample_examples(seeds, number, seed=42) for number in range(20)]
    backward = [sample_examples(seeds, number, seed=42) for number in reversed(range(20))]
    assert forward == backward[::-1]
    assert len({tuple(s.id for s in shown) for shown in forward}) == 20  # and they differ
    assert sample_examples(seeds, 3, seed=7) != sample_examples(seeds, 3, seed=42)


def test_a_seed_file_that_is_not_one_is_refused_naming_the_line(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "instances": []}) + "\n")
    with pytest.raises(RecipeError, match=r"seeds.jsonl: line 1 is not a seed task"):
        load_seed_tasks(bad)
    with pytest.raises(RecipeError, match="cannot read the seed tasks"):
        load_seed_tasks(tmp_path / "missing.jsonl")
    alpaca_records = tmp_path / "alpaca.jsonl"
    alpaca_records.write_text(
        "".join(json.dumps({"instruction": f"Task {i}.", "output": "ok"}) + "\n" for i in range(3))
    )
    assert [s.instruction for s in load_seed_tasks(alpaca_records)] == [
        "Task 0.",
        "Task 1.",
        "Task 2.",
    ]
    assert SEED_TASKS.name == "seed_tasks.jsonl"


# --- parsing ---------------------------------------------------------------------------------

COMPLETION = (
    " Rewrite the sentence in the passive voice.\n4. Input:\nThe cat chased the mouse.\n"
    "4. Output:\nThe mouse was chased by the cat.\n###\n"
    "5. Instruction: What is the tallest mountain on Earth?\n5. Input:\n<noinput>\n"
    "5. Output:\nMount Everest.\n###\n"
    "6. Instruction: Give three synonyms for happy.\n6. Input:\n<No Input>\n6. Output:\nglad"
)


def test_an_answer_continuing_the_prompt_gives_its_numbered_tasks():
    parsed = parse_answer(COMPLETION, first_number=4, finish_reason="stop")
    assert parsed.tasks == [
        Task(
            "Rewrite the sentence in the passive voice.",
            "The cat chased the mouse.",
            "The mouse was chased by the cat.",
        ),
        Task("What is the tallest mountain on Earth?", "", "Mount Everest."),
        Task("Give three synonyms for happy.", "", "glad"),
    ]
    assert not parsed.dropped


def test_the_last_task_is_dropped_when_the_answer_was_cut_by_its_length():
    parsed = parse_answer(COMPLETION, first_number=4, finish_reason="length")
    assert [t.instruction for t in parsed.tasks][-1] == "What is the tallest mountain on Earth?"
    assert parsed.dropped == {"truncated": 1}


def test_a_chat_answer_is_read_from_its_first_numbered_task():
    chat = "Sure! Here are more tasks:\n\n4. Instruction:" + COMPLETION
    parsed = parse_answer(chat, first_number=4, finish_reason="stop", continues_prompt=False)
    assert len(parsed.tasks) == 3 and not parsed.dropped
    # A chat model that renumbers from 1 is read as well.
    renumbered = "1. Instruction: Name a fruit that is red.\n1. Input:\n\n1. Output:\nA cherry."
    parsed = parse_answer(renumbered, first_number=4, finish_reason="stop", continues_prompt=False)
    assert parsed.tasks == [Task("Name a fruit that is red.", "", "A cherry.")]


def test_two_tasks_run_together_are_dropped_as_merged_not_parsed_as_one():
    merged = (
        " Summarise the text.\n4. Input:\nA long text.\n4. Output:\nA summary.\n##\n"
        "5. Instruction: Name a planet.\n5. Input:\n<noinput>\n5. Output:\nMars."
    )
    assert parse_answer(merged, 4, "stop").dropped == {"merged": 1}


@pytest.mark.parametrize(
    "item",
    [
        "4. Instruction: Only an instruction.",
        "4. Instruction: A.\n4. Output:\nB.\n4. Input:\nC.",  # out of order
        "4. Instruction: A.\n5. Input:\nB.\n6. Output:\nC.",  # numbers that differ
        "Some prose with no labels at all.",
    ],
)
def test_an_item_that_is_not_a_numbered_task_is_unparseable(item):
    assert parse_item(item) == "unparseable"


def test_an_item_without_its_input_line_has_no_input():
    assert parse_item("7. Instruction: Name a colour.\n7. Output:\nBlue.") == Task(
        "Name a colour.", "", "Blue."
    )


def test_garbage_gives_no_task_and_says_why():
    parsed = parse_answer("@@@ ### \n\n### 12 12 12 ###", 4, "stop")
    assert parsed.tasks == [] and parsed.dropped == {"unparseable": 2}


# --- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (task("Name three colours."), "too_short"),  # 3 words: Alpaca drops <= 3
        (task("Name four primary colours."), None),
        (task(" ".join(["word"] * 151)), "too_long"),
        (task("Describe the image of a cat."), "blacklisted"),
        (task("Describe the Images below in detail."), "blacklisted"),
        (task("Please go to the store and buy milk."), "blacklisted"),
        (task("Compose a short piece of Music for piano."), "blacklisted"),
        (task("Explain why maple trees lose leaves."), None),  # "map" only as a whole word
        (task("Write a program that sorts a list."), "write_a_program"),
        (task('"Quote" the following text exactly please.'), "leading_punctuation"),
        (task("Ünderstand this sentence and explain it."), "non_ascii_start"),
        (task("Translate the sentence into French.", "Hello.", ""), "empty_output"),
        (task("Translate the sentence into French.", "Hello.", "<nooutput>"), "empty_output"),
        (task("Summarise the article at this link.", "https://example.com/a"), "unseeable_input"),
        (task("Summarise the article at this page.", "see www.example.com"), "unseeable_input"),
        (task("Describe what the attachment shows.", "<Picture Attached>"), "unseeable_input"),
        (task("Describe the person in the photo.", "[photo of a man]"), "unseeable_input"),
        (task("Tell me what this email is about.", "<noinput>"), None),
    ],
)
def test_each_rule_names_the_task_it_drops(candidate, reason):
    assert check_task(candidate) == reason
    if reason is not None:
        assert reason in REASONS
