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
    A preference pair (format preference) is the prompt and the chosen answer as ``messages``
    (so everything that reads an answer reads the chosen one) and the ``rejected`` answer.
    ``source``/``row`` point back to the file and 1-based line or row, for error messages
    and the curation report.
    """

    messages: tuple[Message, ...] = ()
    text: str | None = None
    rejected: str | None = None  # a preference pair's rejected answer to the same prompt
    source: str = ""
    row: int = 0
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def is_pair(self) -> bool:
        return self.rejected is not None

    def with_rejected_answer(self) -> Example:
        """The pair's prompt with its rejected answer as the final assistant turn."""
        return Example(messages=(*self.prompt_messages(), Message("assistant", self.rejected or "")))

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
        text = "\n".join(f"{m.role}: {m.content}" for m in self.messages)
        return text if self.rejected is None else f"{text}\nrejected: {self.rejected}"
