"""The Alpaca templates, exactly as Stanford published them."""

from alpaca_serve.core.prompts import (
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    SECTION_HEADERS,
    format_prompt,
)


def test_instruction_without_input_uses_the_no_input_template_exactly():
    assert format_prompt("Name three colours.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName three colours.\n\n### Response:"
    )


def test_instruction_with_input_uses_the_input_template_exactly():
    assert format_prompt("Translate to French.", "Good morning") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:"
    )


def test_empty_input_falls_back_to_the_no_input_template():
    assert format_prompt("Say hi.", "") == PROMPT_NO_INPUT.format(instruction="Say hi.")


def test_braces_in_user_text_are_kept_as_they_are():
    assert "{input} and {0}" in format_prompt("Explain {input} and {0}", "")
    assert "{instruction}" in format_prompt("x", "{instruction}")


def test_templates_use_unix_newlines_only():
    for template in (PROMPT_NO_INPUT, PROMPT_WITH_INPUT):
        assert "\r" not in template
        assert template.endswith("### Response:")


def test_section_headers_are_the_template_headers():
    for header in SECTION_HEADERS:
        assert header in PROMPT_WITH_INPUT
