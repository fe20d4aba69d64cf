"""Loss masks cover exactly the assistant spans + EOS; packed examples never see each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.tensors.batching import MeteredCollator, RowCollator, TokenMeter, pack_examples, single_rows
from kubetune_trainer.tensors.encode import IGNORE_INDEX, encode_example, prompt_ids


def trained_text(example: Example, tokenizer, template: str | None = None) -> str:  # type: ignore[no-untyped-def]
    encoded = encode_example(example, tokenizer, 512, template)
    return str(
        tokenizer.decode(
            [i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
        )
    )


def test_only_assistant_turns_and_their_eos_carry_loss(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    multi = Example(
        messages=(
            Message("system", "You are terse."),
            Message("user", "Capital of France?"),
            Message("assistant", "Paris."),
            Message("user", "And of Italy?"),
            Message("assistant", "Rome, of course."),
        )
    )
    assert trained_text(multi, tokenizer) == "Paris.<|im_end|>Rome, of course.<|im_end|>"
    single = Example(messages=(Message("user", "2+2?"), Message("assistant", "4")))
    assert trained_text(single, tokenizer) == "4<|im_end|>"
    encoded = encode_example(single, tokenizer, 512)
    assert encoded.labels[-2] == tokenizer.eos_token_id or encoded.labels[-1] == tokenizer.eos_token_id


def test_custom_chat_template_and_plain_text(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}### assistant: {% endif %}"
    example = Example(messages=(Message("user", "Say hi"), Message("assistant", "hi there")))
    # The template ends in a space that the tokenizer merges into the answer's first token.
    assert trained_text(example, tokenizer, template) == " hi there<|im_end|>"
    assert tokenizer.decode(prompt_ids(example, tokenizer, template)).endswith("### assistant: ")
    text = encode_example(Example(text="just some text"), tokenizer, 512)
    assert text.labels == text.input_ids and text.input_ids[-1] == tokenizer.eos_token_id


def test_packing_isolates_examples(tiny_model_dir: Path, tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = [
        encode_example(
            Example(messages=(Message("user", f"question {i} " * (i + 1)), Message("assistant", f"answer {i}"))),
            tokenizer,
            128,
        )
        for i in range(5)
    ]
    rows = pack_examples(examples, 128)
    assert len(rows) < len(examples), "several examples share a row"
    batch = RowCollator(tokenizer.pad_token_id, packed=True)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
    )
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        compared = 0
        for row_index, row in enumerate(rows):
            starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.position_ids)]
            for start, end in itertools.pairwise(starts):
                alone = model(input_ids=torch.tensor([row.input_ids[start:end]]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[row_index, start:end], alone, atol=1e-5, rtol=1e-4)
                compared += 1
    assert compared == len(examples)
    text_rows = pack_examples([encode_example(Example(text=f"plain text {i}"), tokenizer, 64) for i in range(4)], 64)
    for row in text_rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == IGNORE_INDEX for i in starts), "no target crosses an example boundary"


def test_padding_is_masked_and_counted(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    examples = [encode_example(Example(text="word " * n), tokenizer, 64) for n in (2, 10, 30)]
    rows = single_rows(examples, 64)
    batch = RowCollator(tokenizer.pad_token_id, packed=False)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
    )
    padded = batch["attention_mask"] == 0
    assert bool((batch["labels"][padded] == IGNORE_INDEX).all())
    lengths = [len(r.input_ids) for r in rows]
    meter = TokenMeter()
    collate = MeteredCollator(RowCollator(tokenizer.pad_token_id, packed=False), meter)
    collate([{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows])
    assert meter.counts.positions == 0, "a batch counts once a training step consumes it, not when it is fetched"
    meter.consumed()
    counts = meter.counts
    assert counts.positions == 3 * max(lengths) and counts.tokens == sum(lengths)
    targets = sum(1 for r in rows for label in r.labels[1:] if label != IGNORE_INDEX)
    assert counts.trained == targets > 0
    assert counts.padding_ratio == 1 - sum(lengths) / (3 * max(lengths)) > 0.3
    packed = TokenMeter()
    row = pack_examples(examples, 64)[0]
    MeteredCollator(RowCollator(tokenizer.pad_token_id, packed=True), packed)(
        [{"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids}]
    )
    packed.consumed()
    assert packed.counts.padding_ratio == 0.0 and packed.counts.tokens == len(row.input_ids)
