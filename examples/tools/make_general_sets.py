"""Generate examples/general/{regression,replay}.jsonl: general prompts with the BASE model's answers.

kubetune's default recipe is measured for forgetting on `regression.jsonl` (the tuned model's
per-token likelihood of the base model's own answers) and can mix `replay.jsonl` into training
(self-distillation: the base's answers to other general prompts keep the tuned model close to
the base outside its task). The two sets share no prompt.

Deterministic: prompts come from seeded templates, answers from greedy decoding of the
built-in SmolLM2-135M-Instruct (converted once and cached). Takes ~5-10 min on 2 CPU cores.
Run: python examples/tools/make_general_sets.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COUNTRIES = [
    "France",
    "Japan",
    "Brazil",
    "Canada",
    "Egypt",
    "India",
    "Italy",
    "Kenya",
    "Mexico",
    "Norway",
    "Peru",
    "Spain",
    "Germany",
    "Australia",
    "Argentina",
    "Greece",
    "Turkey",
    "Vietnam",
    "Poland",
    "Chile",
    "Portugal",
    "Ireland",
]
TOPICS = [
    "the ocean",
    "autumn leaves",
    "a quiet library",
    "the moon",
    "a busy city",
    "friendship",
    "a mountain hike",
    "rain",
    "coffee in the morning",
    "an old bicycle",
    "the first snow",
    "a lighthouse",
    "a garden",
    "trains at night",
]
CONCEPTS = [
    "photosynthesis",
    "gravity",
    "inflation",
    "a black hole",
    "the water cycle",
    "democracy",
    "an ecosystem",
    "compound interest",
    "evolution",
    "electricity",
    "a vaccine",
    "the internet",
    "machine learning",
    "recycling",
    "climate change",
    "the immune system",
    "a volcano",
    "supply and demand",
    "DNA",
    "the solar system",
    "an atom",
    "a rainbow",
    "the stock market",
    "renewable energy",
    "a computer program",
    "tides",
    "earthquakes",
    "friction",
]
TASKS = [
    "boil an egg",
    "write a good resume",
    "save money each month",
    "learn a new language",
    "plant tomatoes",
    "fall asleep faster",
    "prepare for a job interview",
    "make a cup of tea",
    "clean a laptop keyboard",
    "start running as a beginner",
    "organize a small closet",
    "write a thank-you note",
    "study for an exam",
    "reduce stress at work",
    "keep houseplants alive",
    "make pancakes",
    "change a flat bicycle tire",
    "back up photos",
    "be a better listener",
    "plan a weekend trip",
    "memorize a short speech",
    "cook rice",
]
ANIMALS = [
    "elephants",
    "penguins",
    "bees",
    "dolphins",
    "owls",
    "cats",
    "dogs",
    "octopuses",
    "camels",
    "frogs",
    "eagles",
    "ants",
]
THINGS = [
    "a bicycle",
    "a refrigerator",
    "a telescope",
    "a compass",
    "a smartphone",
    "a microwave",
    "a thermometer",
    "a clock",
    "an umbrella",
    "a battery",
    "a light bulb",
    "a calculator",
]
WORDS = ["happy", "fast", "bright", "ancient", "brave", "quiet", "generous", "curious", "difficult", "enormous"]
PEOPLE = [
    "Albert Einstein",
    "Marie Curie",
    "William Shakespeare",
    "Leonardo da Vinci",
    "Isaac Newton",
    "Ada Lovelace",
    "Nelson Mandela",
    "Charles Darwin",
    "Frida Kahlo",
    "Mahatma Gandhi",
    "Galileo Galilei",
    "Jane Austen",
]

TEMPLATES = [
    lambda r: f"What is the capital of {r.choice(COUNTRIES)}?",
    lambda r: f"Explain {r.choice(CONCEPTS)} in simple terms.",
    lambda r: f"How do I {r.choice(TASKS)}?",
    lambda r: f"Give me three tips to {r.choice(TASKS)}.",
    lambda r: f"Write a short poem about {r.choice(TOPICS)}.",
    lambda r: f"What is {r.randint(2, 30)} times {r.randint(2, 30)}?",
    lambda r: f"What is {r.randint(10, 500)} plus {r.randint(10, 500)}?",
    lambda r: f"Tell me an interesting fact about {r.choice(ANIMALS)}.",
    lambda r: f"How does {r.choice(THINGS)} work?",
    lambda r: f"What is a synonym for '{r.choice(WORDS)}'?",
    lambda r: f"What is the opposite of '{r.choice(WORDS)}'?",
    lambda r: f"Who was {r.choice(PEOPLE)}?",
    lambda r: f"Summarize why {r.choice(CONCEPTS)} matters in two sentences.",
    lambda r: f"Write one sentence describing {r.choice(TOPICS)}.",
    lambda r: f"What do {r.choice(ANIMALS)} eat?",
    lambda r: f"Is {r.randint(2, 99)} an even or odd number?",
    lambda r: f"Translate 'good morning' into {r.choice(['French', 'Spanish', 'German', 'Italian', 'Portuguese'])}.",
    lambda r: f"What language is spoken in {r.choice(COUNTRIES)}?",
    lambda r: f"Suggest a name for a cafe that serves food from {r.choice(COUNTRIES)}.",
    lambda r: (
        f"What should I pack for a weekend trip to {r.choice(['the beach', 'the mountains', 'a big city', 'the countryside'])}?"
    ),
]


def prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: list[str] = []
    while len(seen) < count:
        text = rng.choice(TEMPLATES)(rng)
        if text not in seen:
            seen.append(text)
    return seen


def answer_all(questions: list[str], batch_size: int = 16, max_new_tokens: int = 96) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.models.builtin import builtin_model_dir

    torch.set_num_threads(2)
    path = builtin_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    answers = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in chunk
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        for row in out[:, batch["input_ids"].shape[1] :]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        print(f"{min(start + batch_size, len(questions))}/{len(questions)}", flush=True)
    return answers


def main() -> None:
    questions = prompts(460, seed=7)
    answers = answer_all(questions)
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in zip(questions, answers, strict=True)
        if a
    ]
    out = Path(__file__).resolve().parents[1] / "general"
    out.mkdir(parents=True, exist_ok=True)
    regression, replay = rows[:240], rows[240:]
    for name, part in (("regression", regression), ("replay", replay)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
        print(f"wrote {len(part)} rows to {out / name}.jsonl")


if __name__ == "__main__":
    main()
