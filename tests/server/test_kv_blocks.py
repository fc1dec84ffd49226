"""The KV cache block size asked of vLLM: 32 on CPU, so that the prefix cache can share the
Alpaca preamble, unless the operator says otherwise."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alpaca_serve.core.prompts import PROMPT_WITH_INPUT
from alpaca_serve.server.engine import CPU_KV_BLOCK_SIZE, kv_block_size
from alpaca_serve.server.settings import ServerSettings


def test_on_cpu_blocks_are_32_tokens_and_on_cuda_vllms_own():
    assert kv_block_size(ServerSettings(), "cpu") == CPU_KV_BLOCK_SIZE == 32
    assert kv_block_size(ServerSettings(), "cuda") is None


def test_the_setting_wins_and_blank_means_the_default():
    assert kv_block_size(ServerSettings(kv_block_size=128), "cpu") == 128
    assert kv_block_size(ServerSettings(kv_block_size=" "), "cpu") == 32


def test_a_block_size_that_is_not_a_multiple_of_16_stops_the_server_at_load():
    with pytest.raises(ValidationError, match="not a multiple of 16"):
        ServerSettings(kv_block_size=40)


def test_the_preamble_with_an_input_fills_a_cpu_block_with_the_default_models_tokenizer(
    tiny_tokenizer,
):
    preamble = PROMPT_WITH_INPUT.split("{instruction}")[0]
    assert len(tiny_tokenizer.encode(preamble)) >= CPU_KV_BLOCK_SIZE
