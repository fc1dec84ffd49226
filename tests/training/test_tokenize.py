"""Tokenizing Alpaca records: loss on the response and EOS only, counted truncation, [PAD]."""

from __future__ import annotations

import pytest

from alpaca_serve.core.prompts import PROMPT_NO_INPUT, PROMPT_WITH_INPUT
from alpaca_serve.training.data import AlpacaRecord
from alpaca_serve.training.tokenization import (
    IGNORE_INDEX,
    PackCollator,
    PadCollator,
    add_missing_special_tokens,
    resize_embeddings,
    tokenize_records,
)

NO_INPUT = AlpacaRecord("Name a primary colour.", "", "Red is a primary colour.")
WITH_INPUT = AlpacaRecord("Translate to French.", "Good morning", "Bonjour")


@pytest.fixture
def fresh_tokenizer(tiny_model_dir):
    """A tokenizer of its own, for tests that change its special tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.mark.parametrize(
    ("record", "template"),
    [(NO_INPUT, PROMPT_NO_INPUT), (WITH_INPUT, PROMPT_WITH_INPUT)],
    ids=["no-input template", "with-input template"],
)
def test_prompt_positions_carry_minus_100_and_every_response_token_and_eos_is_learned(
    tiny_tokenizer, record, template
):
    (example,), stats = tokenize_records([record], tiny_tokenizer, max_length=512)
    ids, labels = example["input_ids"], example["labels"]
    prompt_text = template.format(instruction=record.instruction, input=record.input)
    prompt_ids = tiny_tokenizer(prompt_text)["input_ids"]

    # The example starts with exactly the prompt the server sends for this record.
    assert ids[: len(prompt_ids)] == prompt_ids
    assert tiny_tokenizer.decode(ids[: len(prompt_ids)]) == prompt_text
    for position, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if position < len(prompt_ids):
            assert label == IGNORE_INDEX, f"prompt token {position} is learned"
        else:
            assert label == token, f"response token {position} is not learned"
    assert ids[-1] == labels[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids[len(prompt_ids) : -1]) == record.output
    assert stats.target_tokens == len(ids) - len(prompt_ids)


def test_with_input_template_is_used_only_when_input_is_non_empty(tiny_tokenizer):
    examples, _ = tokenize_records([NO_INPUT, WITH_INPUT], tiny_tokenizer, max_length=512)
    texts = [tiny_tokenizer.decode(e["input_ids"]) for e in examples]

    assert "### Input:" not in texts[0]
    assert "### Input:\nGood morning\n\n### Response:Bonjour" in texts[1]


def test_long_examples_are_truncated_and_counted_and_ones_with_no_room_for_a_response_dropped(
    tiny_tokenizer,
):
    prompt_len = len(tiny_tokenizer(PROMPT_NO_INPUT.format(instruction="Count."))["input_ids"])
    records = [
        AlpacaRecord("Count.", "", " ".join(str(n) for n in range(200))),  # cut, target kept
        AlpacaRecord("Count. " * 100, "", "1"),  # the prompt alone is too long
        NO_INPUT,
    ]

    examples, stats = tokenize_records(records, tiny_tokenizer, max_length=prompt_len + 10)

    assert (stats.examples, stats.truncated, stats.dropped_no_target) == (2, 2, 1)
    assert stats.dropped_indices == [1]
    assert all(len(e["input_ids"]) <= prompt_len + 10 for e in examples)
    assert all(any(label != IGNORE_INDEX for label in e["labels"]) for e in examples)


def test_tokenizer_without_pad_gets_pad_token_and_mean_initialised_embedding_rows(
    fresh_tokenizer, tiny_model_dir
):
    import torch
    from transformers import AutoModelForCausalLM

    fresh_tokenizer.pad_token = None
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    old_inputs = model.get_input_embeddings().weight.detach().clone()
    old_outputs = model.get_output_embeddings().weight.detach().clone()

    added = add_missing_special_tokens(fresh_tokenizer)
    rows = resize_embeddings(model, len(fresh_tokenizer))

    assert added == ["[PAD]"] and rows == 1
    assert fresh_tokenizer.pad_token == "[PAD]"
    assert fresh_tokenizer.pad_token_id == old_inputs.shape[0]
    inputs = model.get_input_embeddings().weight.detach()
    outputs = model.get_output_embeddings().weight.detach()
    assert inputs.shape[0] == outputs.shape[0] == old_inputs.shape[0] + 1
    torch.testing.assert_close(inputs[:-1], old_inputs)
    torch.testing.assert_close(inputs[-1], old_inputs.mean(dim=0))
    torch.testing.assert_close(outputs[-1], old_outputs.mean(dim=0))


def test_tokenizer_with_empty_eos_gets_one_so_the_model_learns_to_stop(fresh_tokenizer):
    fresh_tokenizer.eos_token = None

    added = add_missing_special_tokens(fresh_tokenizer)
    (example,), _ = tokenize_records([NO_INPUT], fresh_tokenizer, max_length=512)

    assert added == ["</s>"]
    assert example["input_ids"][-1] == example["labels"][-1] == fresh_tokenizer.eos_token_id


def test_tokenizer_with_pad_and_eos_is_left_unchanged(fresh_tokenizer):
    size = len(fresh_tokenizer)

    assert add_missing_special_tokens(fresh_tokenizer) == []
    assert len(fresh_tokenizer) == size


def test_batches_are_right_padded_with_padding_never_learned(tiny_tokenizer):
    examples, _ = tokenize_records([NO_INPUT, WITH_INPUT], tiny_tokenizer, max_length=512)
    batch = PadCollator(tiny_tokenizer.pad_token_id)(examples)
    short = min(range(2), key=lambda i: len(examples[i]["input_ids"]))
    length = len(examples[short]["input_ids"])

    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"][short, :length].tolist() == examples[short]["input_ids"]
    assert set(batch["labels"][short, length:].tolist()) == {IGNORE_INDEX}
    assert set(batch["attention_mask"][short, length:].tolist()) == {0}


def test_a_packed_batch_gives_the_same_loss_as_the_padded_one(tiny_tokenizer, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    examples, _ = tokenize_records([NO_INPUT, WITH_INPUT], tiny_tokenizer, max_length=512)
    padded = PadCollator(tiny_tokenizer.pad_token_id)(examples)
    packed = PackCollator()(examples)

    with torch.no_grad():
        padded_loss = model(**padded).loss
        packed_loss = model(**packed, use_cache=False).loss  # as in training

    assert packed["input_ids"].shape[0] == 1
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-4, atol=1e-4)


def test_for_lora_a_tokenizer_without_pad_pads_with_eos_and_adds_no_row(fresh_tokenizer):
    fresh_tokenizer.pad_token = None
    size = len(fresh_tokenizer)

    added = add_missing_special_tokens(fresh_tokenizer, pad_with_existing=True)

    assert added == [] and len(fresh_tokenizer) == size
    assert fresh_tokenizer.pad_token == fresh_tokenizer.eos_token
