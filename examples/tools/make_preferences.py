"""Generate examples/ticket-preferences/data.jsonl: preference pairs over the support tickets.

Each pair asks a ticket of examples/support-tickets/tickets.jsonl (its system prompt and message)
and prefers the concise, on-format answer the system prompt asks for (the bare category label)
over a chatty one that names the same category in a sentence, in one of several styles. The rule
that made the pairs is the judge (:func:`on_format`): an answer wins when it is exactly one of
the labels, which is how ``scripts/measure_methods.py`` computes a win rate of the tuned model's
answers over the base's on held-out prompts.

Deterministic (seeded), standard library only. Format preference, TRL's conversational shape:
``{"prompt": [messages], "chosen": text, "rejected": text}``.
Run: python examples/tools/make_preferences.py [OUTPUT]   (default: examples/ticket-preferences/data.jsonl)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20261205
EXAMPLES = Path(__file__).resolve().parents[1]
TICKETS = EXAMPLES / "support-tickets" / "tickets.jsonl"
DEFAULT_OUTPUT = EXAMPLES / "ticket-preferences" / "data.jsonl"
LABELS = ("billing", "technical", "account", "shipping", "returns", "feature_request")

# How each category reads inside a sentence.
SPOKEN = {
    "billing": "a billing question",
    "technical": "a technical problem",
    "account": "an account issue",
    "shipping": "a shipping matter",
    "returns": "a returns request",
    "feature_request": "a feature request",
}
# Chatty answers: the right category, not in the format asked for.
CHATTY = (
    "Thanks for reaching out! This looks like {spoken} to me, so I would file it under {label}.",
    "Category: {label}. Let me know if you need anything else!",
    "I'd say this is {spoken}. Label: {label}",
    "Hmm, reading the ticket carefully, the customer is describing {spoken}; the best category is probably {label}.",
    "{Label}",
    "The answer is: {label}.",
    "Based on the message, this should go to the {label} team because it is {spoken}.",
    "**{label}**\n\nThe customer describes {spoken}.",
)


def on_format(answer: str) -> bool:
    """The judge: the answer is exactly one category label, as the system prompt asks."""
    return answer.strip() in LABELS


def pairs(tickets: list[dict[str, object]], seed: int = SEED) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for ticket in tickets:
        messages = ticket["messages"]
        assert isinstance(messages, list)
        *prompt, answer = messages
        label = answer["content"]
        template = rng.choice(CHATTY)
        rejected = template.format(label=label, Label=label.capitalize(), spoken=SPOKEN[label])
        rows.append({"prompt": prompt, "chosen": label, "rejected": rejected})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    tickets = [json.loads(line) for line in TICKETS.read_text().splitlines() if line.strip()]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(row) + "\n" for row in pairs(tickets)))


if __name__ == "__main__":
    main()
