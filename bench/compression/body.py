"""The response bodies every compression benchmark serves: a realistic HTML page and a JSON API answer.

Deterministic (a fixed seed), so tako, nginx and every run compress the very same bytes.
"""

from __future__ import annotations

import json
import random

_WORDS = [
    "deploy",
    "release",
    "server",
    "instance",
    "proxy",
    "request",
    "response",
    "header",
    "body",
    "stream",
    "worker",
    "health",
    "check",
    "route",
    "host",
    "certificate",
    "rollback",
    "migration",
    "database",
    "cache",
    "session",
    "token",
    "user",
    "account",
    "order",
    "invoice",
    "product",
    "price",
    "quantity",
    "status",
    "pending",
    "shipped",
    "delivered",
    "customer",
    "address",
    "street",
    "city",
    "country",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "that",
    "be",
    "are",
    "was",
    "were",
    "it",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def html_page(target: int = 80 * 1024, seed: int = 7) -> bytes:
    """An HTML page of about `target` bytes: a navigation, article paragraphs, a table of orders."""
    rng = random.Random(seed)
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Orders</title>'
        '<link rel="stylesheet" href="/static/app.3f9a1c.css"></head><body>\n<nav class="top">'
        + "".join(f'<a class="nav-link" href="/section/{i}">{rng.choice(_WORDS)}</a>' for i in range(12))
        + "</nav>\n<main>"
    ]
    size = sum(map(len, parts))
    row = 0
    while size < target:
        if row % 8 == 0:
            chunk = (
                f'<article class="post"><h2>{_sentence(rng, 5)}</h2><p>{_sentence(rng, 60)}</p></article>\n'
            )
        else:
            chunk = (
                f'<tr class="order-row" data-id="{rng.randrange(10**6)}"><td class="num">{row}</td>'
                f'<td class="customer">{_sentence(rng, 3)}</td>'
                f'<td class="price">{rng.randrange(10**5) / 100:.2f}'
                f'</td><td><span class="badge badge-{rng.choice(("ok", "wait", "late"))}">'
                f"{rng.choice(('pending', 'shipped', 'delivered'))}</span></td></tr>\n"
            )
        parts.append(chunk)
        size += len(chunk)
        row += 1
    parts.append("</main></body></html>\n")
    return "".join(parts).encode()


def json_document(target: int = 80 * 1024, seed: int = 11) -> bytes:
    """A JSON list of order records of about `target` bytes, as an API returns it (compact)."""
    rng = random.Random(seed)
    records = []
    size = 2
    while size < target:
        record = {
            "id": rng.randrange(10**9),
            "customer": {"name": _sentence(rng, 2), "email": f"user{rng.randrange(10**5)}@example.com"},
            "status": rng.choice(("pending", "shipped", "delivered")),
            "total": round(rng.random() * 1000, 2),
            "items": [{"sku": f"SKU-{rng.randrange(10**4)}", "qty": rng.randrange(1, 5)} for _ in range(3)],
            "note": _sentence(rng, 8),
        }
        records.append(record)
        size += len(json.dumps(record, separators=(",", ":"))) + 1
    return json.dumps(records, separators=(",", ":")).encode()
