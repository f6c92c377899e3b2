"""The chat tokenizer: special tokens, the exact ChatML of SPEC.md, the assistant loss mask, save/load."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoTokenizer

from cascade.tokenizer import SPECIAL_TOKENS, TAG_TOKENS, train_chat_tokenizer

torch.set_num_threads(1)

CORPUS = [
    "What is 12 + 30? Let me think step by step. 12 + 30 = 42. The answer is 42.",
    "Write a function that returns the sum of two numbers.\ndef add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
] * 20

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "<think>\n2+3=5\n</think>5"},
    {"role": "user", "content": "And 4+4?"},
]
HISTORY = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n2+3=5\n</think>5<|im_end|>\n"
    "<|im_start|>user\nAnd 4+4?<|im_end|>\n"
)
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
    },
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_chat_tokenizer(CORPUS, vocab_size=400)


def test_special_tokens_are_single_fixed_ids(tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(f"x{token}y", add_special_tokens=False)[1] == expected_id
        assert tokenizer.encode(token, add_special_tokens=False) == [expected_id]
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert len(tokenizer) <= 400
    # the tags survive skip_special_tokens (parsers read them); the ChatML markers do not
    ids = tokenizer.encode("<|im_start|>" + "".join(TAG_TOKENS) + "<|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "".join(TAG_TOKENS)


def test_byte_level_round_trips_unseen_text(tokenizer):
    text = "Ünïcödé 🙂 日本語\n\ttabs  and 9876543210"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.tokenize("12345") == ["1", "2", "3", "4", "5"]  # one token per digit


def test_chat_template_thinking_mode(tokenizer):
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == HISTORY + "<|im_start|>assistant\n<think>\n"


def test_chat_template_non_thinking_mode(tokenizer):
    rendered = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert rendered == HISTORY + "<|im_start|>assistant\n<think></think>"
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == HISTORY  # no prompt, no think


def test_chat_template_with_tools_and_tool_turns(tokenizer):
    conversation = [
        SYSTEM,
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
        ]},
        {"role": "tool", "content": "5"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tools=[ADD_TOOL], tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n<tools>\n"
        '{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": '
        '{"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}\n'
        "</tools><|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<tool_call><function=add><parameter=a>2</parameter><parameter=b>3</parameter></function></tool_call>"
        "<|im_end|>\n"
        "<|im_start|>tool\n5<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    # without a system message the tools still get their own system turn
    no_system = tokenizer.apply_chat_template(conversation[1:2], tools=[ADD_TOOL], tokenize=False)
    assert no_system.startswith("<|im_start|>system\n# Tools\n\n<tools>\n{") and "<|im_start|>user\n" in no_system


def test_assistant_mask_covers_exactly_the_assistant_turns(tokenizer):
    conversation = CONVERSATION + [{"role": "assistant", "content": "<think></think>8"}]
    out = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert ids == tokenizer.encode(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)
    assert len(mask) == len(ids)

    # split into maximal runs of equal mask value; each run must decode to exactly one template piece
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            runs.append((mask[start], tokenizer.decode(ids[start:i])))
            start = i
    assert runs == [
        (0, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"),
        (1, "<think>\n2+3=5\n</think>5<|im_end|>"),
        (0, "\n<|im_start|>user\nAnd 4+4?<|im_end|>\n<|im_start|>assistant\n"),
        (1, "<think></think>8<|im_end|>"),
        (0, "\n"),
    ]


def test_save_and_load_keep_everything(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == tokenizer.chat_template
    assert (reloaded.eos_token_id, reloaded.pad_token_id, reloaded.padding_side) == (2, 0, "left")
    assert len(reloaded) == len(tokenizer)
    for kwargs in ({}, {"enable_thinking": False}, {"tools": [ADD_TOOL]}):
        expected = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, **kwargs)["input_ids"]
        assert reloaded.apply_chat_template(CONVERSATION, add_generation_prompt=True, **kwargs)["input_ids"] == expected
    text = "Ünïcödé <think>12 + 30</think> <tool_call>"
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.decode(reloaded.encode(text), skip_special_tokens=True) == text
