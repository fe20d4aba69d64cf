"""Dataset formats: detect which one a file uses and turn each row into an :class:`Example`.

Every problem is a :class:`RowProblem` naming the field (``messages[2].role``), so errors
read ``s3://bucket/data.jsonl:17: field 'messages[2].role': unknown role 'bot' ...``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.v1alpha1 import DatasetFormat
from kubetune_trainer.data.types import ROLES, Example, Message

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class RowProblem(Exception):
    field: str
    message: str
    reason: str  # short key for the report's per-reason counts

    def __str__(self) -> str:
        return f"field '{self.field}': {self.message}" if self.field else self.message


def apply_column_mapping(data: Mapping[str, Any], mapping: Mapping[str, str] | None) -> dict[str, Any]:
    """Rename the dataset's columns to canonical names (mapping: canonical -> dataset column)."""
    if not mapping:
        return dict(data)
    renamed = {k: v for k, v in data.items() if k not in mapping.values()}
    for canonical, column in mapping.items():
        if column in data:
            renamed[canonical] = data[column]
    return renamed


def detect_format(columns: set[str]) -> DatasetFormat | None:
    """The format a row's columns indicate, or None when none fits."""
    if {"chosen", "rejected"} <= columns:
        return DatasetFormat.PREFERENCE
    if "messages" in columns or "conversations" in columns:
        return DatasetFormat.CHAT
    if {"instruction", "output"} <= columns:
        return DatasetFormat.ALPACA
    if {"prompt", "completion"} <= columns:
        return DatasetFormat.PROMPT_COMPLETION
    if "text" in columns:
        return DatasetFormat.TEXT
    return None


def _text(data: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise RowProblem(name, "missing", "missing_field")
        return ""
    if not isinstance(value, str):
        raise RowProblem(name, f"expected a string, got {type(value).__name__}", "wrong_type")
    if required and not value.strip():
        raise RowProblem(name, "empty", "empty_field")
    return value


def _alpaca(data: Mapping[str, Any]) -> Example:
    instruction = _text(data, "instruction")
    extra = _text(data, "input", required=False)
    messages = []
    system = _text(data, "system", required=False)
    if system.strip():
        messages.append(Message("system", system))
    messages.append(Message("user", f"{instruction}\n\n{extra}" if extra.strip() else instruction))
    messages.append(Message("assistant", _text(data, "output")))
    return Example(messages=tuple(messages))


def _prompt_completion(data: Mapping[str, Any]) -> Example:
    return Example(messages=(Message("user", _text(data, "prompt")), Message("assistant", _text(data, "completion"))))


def _plain_text(data: Mapping[str, Any]) -> Example:
    return Example(text=_text(data, "text"))


def _chat_turns(data: Mapping[str, Any]) -> tuple[str, list[Any], str, str, Mapping[str, str] | None]:
    if "messages" in data:
        return "messages", data["messages"], "role", "content", None
    if "conversations" in data:
        return "conversations", data["conversations"], "from", "value", SHAREGPT_ROLES
    raise RowProblem("messages", "missing (expected 'messages' or ShareGPT 'conversations')", "missing_field")


def _turns(data: Mapping[str, Any]) -> tuple[str, list[Message]]:
    """The conversation's turns, each checked (a known role, text content, the system turn first)."""
    column, turns, role_key, content_key, role_map = _chat_turns(data)
    return column, _message_list(column, turns, role_key, content_key, role_map)


def _message_list(
    column: str,
    turns: Any,
    role_key: str = "role",
    content_key: str = "content",
    role_map: Mapping[str, str] | None = None,
) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise RowProblem(column, "expected a non-empty list of turns", "wrong_type")
    messages = []
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, dict):
            raise RowProblem(where, f"expected an object, got {type(turn).__name__}", "wrong_type")
        raw_role = turn.get(role_key)
        role = role_map.get(str(raw_role)) if role_map is not None else raw_role
        if role not in ROLES:
            known = ", ".join(role_map) if role_map is not None else ", ".join(ROLES)
            raise RowProblem(f"{where}.{role_key}", f"unknown role {raw_role!r} (expected {known})", "unknown_role")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RowProblem(f"{where}.{content_key}", "missing or not a string", "wrong_type")
        if not content.strip():
            raise RowProblem(f"{where}.{content_key}", "empty", "empty_field")
        if role == "system" and index != 0:
            raise RowProblem(f"{where}.{role_key}", "a system message must come first", "misplaced_system")
        messages.append(Message(str(role), content))
    return messages


def _chat(data: Mapping[str, Any]) -> Example:
    column, messages = _turns(data)
    if not any(m.role == "assistant" for m in messages):
        raise RowProblem(column, "no assistant turn to learn from", "no_assistant_turn")
    if messages[-1].role != "assistant":
        raise RowProblem(
            f"{column}[{len(messages) - 1}]",
            "the conversation must end with an assistant turn",
            "ends_without_assistant",
        )
    return Example(messages=tuple(messages))


# A request log's confirmed answer: a person's label or feedback on what the model was asked.
LABEL_FIELDS = ("label", "feedback")


def request_log(data: Mapping[str, Any]) -> tuple[Example, bool]:
    """A logged request in one of the shapes serving stacks log (``messages`` as OpenAI chat, with the
    model's answer as a final assistant turn when logged; ``prompt`` with an optional ``completion``;
    ``text``) and whether a person confirmed its answer: a ``label`` (or ``feedback``) field, which
    replaces the logged answer. Raises :class:`RowProblem` for a row that is no request."""
    for field in LABEL_FIELDS:  # null or blank: nobody confirmed; anything else but text is a mistake
        if data.get(field) is not None and not isinstance(data[field], str):
            raise RowProblem(
                field, f"expected the confirmed answer as a string, got {type(data[field]).__name__}", "wrong_type"
            )
    label = next((data[f] for f in LABEL_FIELDS if isinstance(data.get(f), str) and data[f].strip()), None)
    if "messages" in data or "conversations" in data:
        column, turns = _turns(data)
        if not any(t.role == "user" for t in turns):
            raise RowProblem(column, "no user turn: not a request", "no_user_turn")
        if label is not None:
            turns = [*(turns[:-1] if turns[-1].role == "assistant" else turns), Message("assistant", label)]
        return Example(messages=tuple(turns)), label is not None
    if "prompt" in data:
        turns = [Message("user", _text(data, "prompt"))]
        answer = label if label is not None else _text(data, "completion", required=False)
        if answer.strip():
            turns.append(Message("assistant", answer))
        return Example(messages=tuple(turns)), label is not None
    if "text" in data:
        return Example(text=_text(data, "text")), False
    columns = ", ".join(sorted(data)) or "none"
    raise RowProblem("", f"not a request (columns: {columns}); expected messages, prompt or text", "unknown_format")


# Anthropic's HH-RLHF text: "\n\nHuman: ...\n\nAssistant: ..." turns in one string.
_HH_TURN = re.compile(r"(?:^|\n)\s*(Human|Assistant):[ \t]*")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
PREFERENCE_SHAPES = (
    "prompt, chosen and rejected (strings or message lists); chosen and rejected conversations that share "
    "their prompt; or chosen and rejected Human:/Assistant: text"
)


def _hh_turns(column: str, text: str) -> list[Message]:
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RowProblem(
            column,
            "a string without a prompt column must be Human:/Assistant: turns (Anthropic HH format)",
            "unknown_format",
        )
    messages = []
    for index in range(1, len(parts), 2):
        content = parts[index + 1].strip()
        if not content:
            raise RowProblem(column, f"turn {index // 2 + 1} ({parts[index]}:) is empty", "empty_field")
        messages.append(Message(_HH_ROLES[parts[index]], content))
    return messages


def _conversation(data: Mapping[str, Any], column: str) -> list[Message]:
    value = data[column]
    if isinstance(value, str):
        return _hh_turns(column, value)
    return _message_list(column, value)


def _answer(data: Mapping[str, Any], column: str) -> str:
    """A pair's answer given beside a prompt: text, or a one-message assistant turn (TRL's conversational shape)."""
    value = data[column]
    if isinstance(value, str):
        return _text(data, column)
    turns = _message_list(column, value)
    if len(turns) != 1 or turns[0].role != "assistant":
        raise RowProblem(column, "expected the answer as one assistant message", "wrong_type")
    return turns[0].content


def _preference(data: Mapping[str, Any]) -> Example:
    if not {"chosen", "rejected"} <= set(data):
        columns = ", ".join(sorted(data)) or "none"
        raise RowProblem(
            "", f"not a preference pair (columns: {columns}); expected {PREFERENCE_SHAPES}", "unknown_format"
        )
    if "prompt" in data:
        prompt = data["prompt"]
        turns = [Message("user", _text(data, "prompt"))] if isinstance(prompt, str) else _message_list("prompt", prompt)
        if turns[-1].role != "user":
            raise RowProblem(f"prompt[{len(turns) - 1}]", "the prompt must end with a user turn", "wrong_type")
        chosen, rejected = _answer(data, "chosen"), _answer(data, "rejected")
    else:
        # An implicit prompt: two whole conversations, the same up to their final answers.
        if isinstance(data["chosen"], str) != isinstance(data["rejected"], str):
            raise RowProblem("rejected", "chosen and rejected must both be text or both conversations", "wrong_type")
        chosen_turns, rejected_turns = _conversation(data, "chosen"), _conversation(data, "rejected")
        turns = chosen_turns[:-1]
        for column, conversation in (("chosen", chosen_turns), ("rejected", rejected_turns)):
            if len(conversation) < 2 or conversation[-1].role != "assistant":
                raise RowProblem(column, "expected a prompt and a final assistant answer", "ends_without_assistant")
        if rejected_turns[:-1] != turns:
            raise RowProblem(
                "rejected",
                "chosen and rejected must share every turn before their final answer (the prompt)",
                "prompts_differ",
            )
        chosen, rejected = chosen_turns[-1].content, rejected_turns[-1].content
    if chosen.strip() == rejected.strip():
        raise RowProblem(
            "rejected",
            "the same answer as chosen: a pair teaches a preference only if they differ",
            "identical_answers",
        )
    return Example(messages=(*turns, Message("assistant", chosen)), rejected=rejected)


CONVERTERS: dict[DatasetFormat, Callable[[Mapping[str, Any]], Example]] = {
    DatasetFormat.ALPACA: _alpaca,
    DatasetFormat.CHAT: _chat,
    DatasetFormat.PROMPT_COMPLETION: _prompt_completion,
    DatasetFormat.TEXT: _plain_text,
    DatasetFormat.PREFERENCE: _preference,
}


def to_example(data: Mapping[str, Any], fmt: DatasetFormat) -> Example:
    """Convert one (column-mapped) row; raises :class:`RowProblem`."""
    return CONVERTERS[fmt](data)
