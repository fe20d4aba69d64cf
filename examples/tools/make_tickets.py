"""Generate examples/support-tickets/tickets.jsonl: customer-support tickets and their triage label.

Deterministic (seeded). Tickets are composed from independent pools of openings, problem
statements per category, concrete details and sign-offs, with product names, order numbers,
amounts and dates varied, so no two tickets are near-duplicates (the trainer's MinHash dedup
at Jaccard 0.9 keeps them all). Run: python examples/tools/make_tickets.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = (
    "You triage customer-support tickets for Northwind, an online store with a subscription app. "
    "Reply with exactly one category label: billing, technical, account, shipping, returns, or feature_request."
)

PRODUCTS = [
    "wireless earbuds",
    "standing desk",
    "espresso machine",
    "yoga mat",
    "4K monitor",
    "air fryer",
    "hiking backpack",
    "phone case",
    "mechanical keyboard",
    "smart thermostat",
    "kids' bike",
    "winter jacket",
    "blender",
    "desk lamp",
    "running shoes",
    "coffee grinder",
    "office chair",
    "baby monitor",
    "garden hose",
    "electric toothbrush",
]
PLANS = ["Plus", "Premium", "Family", "Business", "Student"]
DEVICES = [
    "iPhone 14",
    "Pixel 8",
    "Samsung Galaxy S23",
    "iPad",
    "Windows laptop",
    "MacBook Air",
    "Chromebook",
    "Android tablet",
]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "the local courier"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

OPENINGS = [
    "Hi,",
    "Hello,",
    "Hey there,",
    "Good morning,",
    "Hi team,",
    "To whom it may concern,",
    "Hello support,",
    "",
    "Hi Northwind,",
    "Urgent:",
    "Quick question -",
    "Hope you can help.",
]
CLOSINGS = [
    "Thanks.",
    "Thank you!",
    "Please advise.",
    "Thanks in advance.",
    "Regards.",
    "",
    "Cheers",
    "Waiting for your reply.",
    "This is really frustrating.",
    "Appreciate it!",
    "Can someone get back to me today?",
    "thx",
]

PROBLEMS = {
    "billing": [
        "I was charged twice for order #{order}, ${amount} each time.",
        "My card got billed ${amount} for the {plan} plan but I cancelled it in {month}.",
        "The invoice for {month} shows a fee I don't recognise.",
        "Why did my subscription price go up from ${amount} without any notice?",
        "I used a promo code but the discount was not applied to my total.",
        "There is a pending authorization of ${amount} on my bank statement that never went away.",
        "I need a VAT invoice with my company name for order #{order}.",
        "My payment keeps getting declined even though the card works everywhere else.",
        "You charged me the annual price instead of the monthly one for {plan}.",
        "Can you explain the ${amount} charge labelled 'service adjustment'?",
        "I was promised store credit of ${amount} but my balance still shows zero.",
        "The gift card I redeemed was deducted but the order total did not change.",
    ],
    "technical": [
        "The app crashes every time I open the order history on my {device}.",
        "I can't get past the loading screen since the last update on my {device}.",
        "The checkout page shows a blank white screen after I press Pay.",
        "Notifications stopped working on my {device} a few days ago.",
        "The {product} won't pair with the app, it just says 'device not found'.",
        "Search returns no results no matter what I type.",
        "Pictures in the product pages don't load, only grey boxes.",
        "The website is extremely slow and times out when I add items to the cart.",
        "My {product} firmware update failed halfway and now it won't turn on.",
        "I get error code 502 when I try to track anything in the app.",
        "The dark mode setting resets itself every time I restart the app on my {device}.",
        "The barcode scanner in the app doesn't focus on my {device}.",
    ],
    "account": [
        "I can't log in, it says my password is wrong even after resetting it.",
        "Please change the email address on my account to my new work address.",
        "I never received the verification code to sign in.",
        "I want to delete my account and all my personal data.",
        "Someone else's name is showing on my profile.",
        "How do I merge my two accounts? I made one with Google and one with email.",
        "My account was locked after too many attempts, please unlock it.",
        "I need to update my phone number for two-factor authentication.",
        "Can I add my partner to my {plan} membership as a second user?",
        "The app keeps logging me out every few minutes.",
        "I forgot which email I used to register, can you look it up by my phone number?",
        "Please remove my old address from my saved profile.",
    ],
    "shipping": [
        "My {product} was supposed to arrive on {month} {day} and it's still not here.",
        "Tracking for order #{order} hasn't updated in six days.",
        "{carrier} says the package was delivered but there is nothing at my door.",
        "Can I change the delivery address for order #{order}? It hasn't shipped yet.",
        "The box arrived crushed and the {product} inside is dented.",
        "Do you ship to Canada, and how long does it usually take?",
        "I paid for express delivery but it's coming by standard post.",
        "Only one of the two items in order #{order} arrived.",
        "The courier left a note but I work during the day, can I pick it up somewhere?",
        "My order shows 'label created' for a week now, has it actually shipped?",
        "I received someone else's parcel instead of my {product}.",
        "Is there any way to schedule the delivery of the {product} for the weekend?",
    ],
    "returns": [
        "I'd like to return the {product}, it's not what I expected.",
        "How do I send back the {product}? I can't find the return label.",
        "I returned order #{order} three weeks ago and still haven't been refunded.",
        "The {product} I got is the wrong size, can I exchange it?",
        "Is the {product} still returnable after 35 days? I only opened it once.",
        "My {product} stopped working after two weeks, I want a replacement under warranty.",
        "The return portal says my order is not eligible but it arrived damaged.",
        "I dropped off the return at {carrier}, how long until you process it?",
        "Can I return just one item from a bundle?",
        "You refunded the wrong amount for my returned {product}.",
        "I want to swap the {product} for the newer model and pay the difference.",
        "The {product} has a defect, do I have to pay for the return shipping?",
    ],
    "feature_request": [
        "It would be great if the app had a wishlist I could share with family.",
        "Please add Apple Pay as a payment option.",
        "Could you let us filter products by sustainability rating?",
        "I'd love a dark mode on the website, not just the app.",
        "Please add an option to pause my {plan} subscription instead of cancelling.",
        "Can you add price-drop alerts for items I'm watching?",
        "It would help to have delivery time slots at checkout.",
        "Please support exporting my order history as a spreadsheet.",
        "An Android widget showing my deliveries would be really useful.",
        "Could the app remember my preferred size for clothing?",
        "Please add a way to split payment between two cards.",
        "A bulk-order discount for small businesses would be amazing.",
    ],
}

DETAILS = {
    "billing": [
        "I have the bank statement if you need it.",
        "This is the second time this happens.",
        "Please refund the extra charge.",
        "My account email is the one I'm writing from.",
        "I'm on the {plan} plan.",
        "The last four digits of the card are {digits}.",
    ],
    "technical": [
        "I already reinstalled the app.",
        "Clearing the cache didn't help.",
        "It worked fine last week.",
        "I'm on the latest version.",
        "My wifi is fine, other apps work.",
        "Screenshot attached.",
    ],
    "account": [
        "I have access to my old email still.",
        "This is urgent, I have an order pending.",
        "I've been a customer for years.",
        "My username is {user}.",
        "I tried the help page already.",
        "Please confirm once it's done.",
    ],
    "shipping": [
        "The order number is #{order}.",
        "I need it before my trip.",
        "Neighbours didn't get it either.",
        "It was a birthday present.",
        "I'm home all day tomorrow.",
        "The tracking number starts with {digits}.",
    ],
    "returns": [
        "I still have the original packaging.",
        "The receipt is in my email.",
        "I'd prefer a refund to the card.",
        "Order #{order}.",
        "Store credit is fine too.",
        "It's basically unused.",
    ],
    "feature_request": [
        "Lots of my friends would use it.",
        "Other shops already have this.",
        "Just a suggestion!",
        "I'd even pay a bit more for it.",
        "Keep up the good work otherwise.",
        "Is this on your roadmap?",
    ],
}


def fill(template: str, rng: random.Random) -> str:
    return template.format(
        order=rng.randint(100000, 999999),
        amount=f"{rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
        plan=rng.choice(PLANS),
        month=rng.choice(MONTHS),
        day=rng.randint(1, 28),
        device=rng.choice(DEVICES),
        product=rng.choice(PRODUCTS),
        carrier=rng.choice(CARRIERS),
        digits=rng.randint(1000, 9999),
        user=f"{rng.choice(['sam', 'alex', 'jo', 'maria', 'li', 'omar', 'kim'])}{rng.randint(10, 99)}",
    )


def ticket(label: str, rng: random.Random) -> str:
    parts = [rng.choice(OPENINGS), fill(rng.choice(PROBLEMS[label]), rng)]
    parts += [fill(d, rng) for d in rng.sample(DETAILS[label], rng.randint(0, 2))]
    parts.append(rng.choice(CLOSINGS))
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.15:
        text = text.lower()
    return text


def main() -> None:
    rng = random.Random(20261122)
    rows, seen = [], set()
    labels = list(PROBLEMS)
    while len(rows) < 480:
        label = labels[len(rows) % len(labels)]
        body = ticket(label, rng)
        if body in seen:
            continue
        seen.add(body)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": body},
                    {"role": "assistant", "content": label},
                ]
            }
        )
    rng.shuffle(rows)
    out = Path(__file__).resolve().parents[1] / "support-tickets" / "tickets.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} tickets to {out}")


if __name__ == "__main__":
    main()
