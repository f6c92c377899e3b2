"""A small byte-level BPE chat tokenizer, trained in-process on the task corpus.

The tiny from-scratch model needs a tokenizer that fits its data (a 2K vocabulary instead of a real model's 131K)
and speaks the chat format of SPEC.md, so that the same SFT/RL code runs on it and on real checkpoints:

    <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n<think>\n...

Ids 0..8 are the special tokens, in SPECIAL_TOKENS order: pad `<|endoftext|>` = 0, `<|im_start|>` = 1,
eos `<|im_end|>` = 2 (the defaults of `cascade.models.tiny_nemotron_h.tiny_nemotron_h_config`).
Save and load with `save_pretrained` / `AutoTokenizer.from_pretrained`; the chat template travels with it.
"""

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Tags the model writes itself. Single tokens, but not "special": decode(skip_special_tokens=True) keeps them,
# because the think/tool-call parsers read them from the decoded text.
TAG_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tools>", "</tools>"]
SPECIAL_TOKENS = [PAD, IM_START, IM_END, *TAG_TOKENS]

# Qwen2's pre-tokenizer split: words keep one leading non-letter (" the", "(x"), every digit is its own piece
# (arithmetic stays learnable with a small vocabulary), newlines group together.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML as in SPEC.md. Tools are declared in the system turn, one JSON object per line inside <tools>...</tools>.
# Assistant turns render their content as given (plus any structured `tool_calls` in the SPEC.md call syntax),
# and sit inside {% generation %} so return_assistant_tokens_mask=True marks exactly the assistant's tokens,
# its closing <|im_end|> included (the model must learn to stop). The generation prompt opens the answer with
# "<think>\n" (thinking mode, default) or an empty "<think></think>" when enable_thinking=False.
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and message.role == 'system' and tools %}
        {#- already merged into the tools system turn above #}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {%- if message.content is string %}
                {{- message.content }}
            {%- endif %}
            {%- for call in message.tool_calls or [] %}
                {%- set call = call.function if call.function is defined else call %}
                {{- '<tool_call><function=' + call.name + '>' }}
                {%- for name, value in (call.arguments or {}).items() %}
                    {{- '<parameter=' + name + '>' + (value if value is string else value | tojson) + '</parameter>' }}
                {%- endfor %}
                {{- '</function></tool_call>' }}
            {%- endfor %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think></think>' }}
    {%- else %}
        {{- '<think>\\n' }}
    {%- endif %}
{%- endif %}
"""


def train_chat_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it as a chat tokenizer (eos `<|im_end|>`, pad `<|endoftext|>`).

    The vocabulary holds at most `vocab_size` entries (fewer when the corpus runs out of merges): use
    `len(tokenizer)` for the model's vocabulary size. Byte-level, so any text encodes, even unseen characters.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must cover the 256 bytes and {len(SPECIAL_TOKENS)} special tokens")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,  # first, so they get ids 0..8
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The trainer registers all its special tokens as special; demote the tags (same ids, still never split).
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAG_TOKENS])

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # generate() needs prompts right-aligned; training code pads however it likes
    )


__all__ = ["train_chat_tokenizer", "CHAT_TEMPLATE", "SPECIAL_TOKENS", "TAG_TOKENS", "PAD", "IM_START", "IM_END"]
