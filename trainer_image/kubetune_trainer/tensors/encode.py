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

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


# Examples per tokenizer call when counting many: a chunk's rendered texts and encodings stay small.
COUNT_CHUNK = 4096


def _fast_backend(tokenizer: Any) -> Any | None:
    """The Rust tokenizer behind a fast Hugging Face tokenizer, when calling it directly gives the ids
    calling ``tokenizer`` gives (special tokens matched, not split into text); else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        return None
    if getattr(tokenizer, "split_special_tokens", False) or getattr(backend, "encode_special_tokens", False):
        return None
    return backend


def _rendered_chunks(
    examples: Sequence[Example], tokenizer: Any, chat_template: str | None
) -> Iterator[tuple[list[int], list[str], bool]]:
    """Per chunk of examples: positions, the texts to encode, and whether to add special tokens."""
    for start in range(0, len(examples), COUNT_CHUNK):
        chunk = range(start, min(start + COUNT_CHUNK, len(examples)))
        chats = [i for i in chunk if examples[i].is_chat]
        plain = [i for i in chunk if not examples[i].is_chat]
        if chats:
            rendered = tokenizer.apply_chat_template(
                [_as_dicts(examples[i].messages) for i in chats],
                tokenize=False,
                add_generation_prompt=False,
                chat_template=chat_template,
            )
            yield chats, [str(text) for text in rendered], False
        if plain:
            yield plain, [examples[i].text or "" for i in plain], True


def count_tokens_batch(examples: Sequence[Example], tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """``count_tokens`` of each example, with one tokenizer call per chunk of examples.

    A fast tokenizer's Rust backend encodes a whole chunk at once (on every core, without the GIL)
    and builds no offsets or Python lists of ids, where one call per example spends most of its time
    in Python; meanwhile this thread renders the next chunk's chat template. The counts are the same
    (tests and ``bench/curation.py`` compare them).
    """
    backend = _fast_backend(tokenizer)
    if backend is None:
        return [count_tokens(example, tokenizer, chat_template) for example in examples]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def lengths(texts: list[str], special: bool) -> list[int]:
        return [len(encoding) for encoding in encode(texts, add_special_tokens=special)]

    counts = [0] * len(examples)

    def collect(positions: list[int], special: bool, found: Future[list[int]]) -> None:
        for position, length in zip(positions, found.result(), strict=True):
            counts[position] = length + 1 if special else length  # plain text: the EOS encode_example appends

    with ThreadPoolExecutor(max_workers=1) as worker:
        waiting: tuple[list[int], bool, Future[list[int]]] | None = None
        for positions, texts, special in _rendered_chunks(examples, tokenizer, chat_template):
            submitted = (positions, special, worker.submit(lengths, texts, special))
            if waiting is not None:
                collect(*waiting)
            waiting = submitted
        if waiting is not None:
            collect(*waiting)
    return counts


@dataclass(frozen=True)
class TokenCounter:
    """:func:`count_tokens` with the tokenizer and template bound: one example, or many at once
    (``count_batch``, which the curation's length filter uses when it is there)."""

    tokenizer: Any
    chat_template: str | None = None

    def __call__(self, example: Example) -> int:
        return count_tokens(example, self.tokenizer, self.chat_template)

    def count_batch(self, examples: Sequence[Example]) -> list[int]:
        return count_tokens_batch(examples, self.tokenizer, self.chat_template)


def prompt_ids(example: Example, tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """What evaluation feeds ``generate()``: the turns before the final answer + the generation prompt."""
    if not example.is_chat:
        return list(tokenizer(example.text or "", add_special_tokens=True)["input_ids"])
    text = _render(tokenizer, example.prompt_messages(), chat_template, generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
