"""Examples → token ids and labels, with the loss only where the model should learn.

Chat examples are rendered with the model's chat template (or the spec's override). The loss
covers the content of EVERY assistant turn plus the end-of-turn token that closes it, so the
tuned model learns to stop; system/user text and the template's role headers are masked.

The spans are found in character space: the prefix up to each assistant turn is rendered
with ``add_generation_prompt=True`` (where the answer starts) and the conversation through
that turn (where it ends); a fast tokenizer's offsets map characters to tokens. This works
for any template, without relying on ``{% generation %}`` markers few templates have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_trainer.data.types import Example, Message

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class ChatTemplateError(ValueError):
    """The chat template cannot render this conversation in a way spans can be found in."""


def _as_dicts(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _render(
    tokenizer: Any, messages: tuple[Message, ...], chat_template: str | None, *, generation_prompt: bool
) -> str:
    return str(
        tokenizer.apply_chat_template(
            _as_dicts(messages),
            tokenize=False,
            add_generation_prompt=generation_prompt,
            chat_template=chat_template,
        )
    )


def _end_of_turn_text(tokenizer: Any) -> str:
    return str(tokenizer.eos_token or "")


def assistant_char_spans(
    example: Example, tokenizer: Any, chat_template: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans that carry the loss."""
    full = _render(tokenizer, example.messages, chat_template, generation_prompt=False)
    eot = _end_of_turn_text(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(example.messages):
        if message.role != "assistant":
            continue
        prefix = _render(tokenizer, example.messages[:index], chat_template, generation_prompt=True)
        start = len(prefix) if full.startswith(prefix) else full.find(message.content, cursor)
        if start < cursor:
            start = full.find(message.content, cursor)
        if start < 0:
            raise ChatTemplateError(
                f"{example.source}:{example.row}: assistant turn {index} not found in the rendered chat"
            )
        content_end = full.find(message.content, start)
        content_end = (content_end if content_end >= 0 else start) + len(message.content)
        end = content_end
        if eot:
            close = full.find(eot, content_end)
            # The closing token must follow the content directly (modulo whitespace), or it
            # belongs to a later turn.
            if close >= 0 and not full[content_end:close].strip():
                end = close + len(eot)
        spans.append((start, end))
        cursor = end
    return full, spans


def encode_example(
    example: Example, tokenizer: Any, max_length: int, chat_template: str | None = None
) -> EncodedExample:
    """Token ids and labels for one example, truncated to ``max_length`` tokens."""
    if not example.is_chat:
        ids = list(tokenizer(example.text or "", add_special_tokens=True)["input_ids"])
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids.append(int(tokenizer.eos_token_id))
        ids = ids[:max_length]
        return EncodedExample(input_ids=ids, labels=list(ids))

    text, spans = assistant_char_spans(example, tokenizer, chat_template)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for position, (char_start, char_end) in enumerate(encoded["offset_mapping"]):
        if char_end <= char_start:
            continue
        # Overlap, not containment: a token may merge the answer's first word with the
        # template's trailing space (" hi"); the model has to produce that token.
        if any(char_start < end and char_end > start for start, end in spans):
            labels[position] = ids[position]
    return EncodedExample(input_ids=ids[:max_length], labels=labels[:max_length])


def count_tokens(example: Example, tokenizer: Any, chat_template: str | None = None) -> int:
    """Tokens the example occupies in training (same rendering as ``encode_example``)."""
    if not example.is_chat:
        return len(tokenizer(example.text or "", add_special_tokens=True)["input_ids"]) + 1
    text = _render(tokenizer, example.messages, chat_template, generation_prompt=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(example: Example, tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """What evaluation feeds ``generate()``: the turns before the final answer + the generation prompt."""
    if not example.is_chat:
        return list(tokenizer(example.text or "", add_special_tokens=True)["input_ids"])
    text = _render(tokenizer, example.prompt_messages(), chat_template, generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
