"""The trainer's normalised example: every dataset format becomes one of these."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class Example:
    """One training example and where it came from.

    Conversational formats (alpaca, chat, prompt-completion) fill ``messages``; the loss is
    taken on every assistant turn. Plain text fills ``text``; the loss is taken on all of it.
    ``source``/``row`` point back to the file and 1-based line or row, for error messages
    and the curation report.
    """

    messages: tuple[Message, ...] = ()
    text: str | None = None
    source: str = ""
    row: int = 0
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    def prompt_messages(self) -> tuple[Message, ...]:
        """Every message before the final assistant turn: what a model is asked at eval time."""
        if not self.messages or self.messages[-1].role != "assistant":
            return self.messages
        return self.messages[:-1]

    def reference(self) -> str:
        """The final assistant turn: the expected answer at eval time."""
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[-1].content
        return self.text or ""

    def flat_text(self) -> str:
        """All text of the example, for hashing, dedup and splits."""
        if self.text is not None:
            return self.text
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)
