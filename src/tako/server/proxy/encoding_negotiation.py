"""`best_encoding`: the content coding to answer with, chosen from a request's `Accept-Encoding` value.

Pure (no state, no I/O): the response compressor and the static file server both call it. It follows
RFC 9110 section 12.5.3 and tolerates what clients send in practice: any case, spaces, `x-gzip`, empty
elements, junk parameters. An element it cannot read (a bad q-value) is skipped rather than failing the
request, and only the first `MAX_ELEMENTS` elements are read, so a huge header costs a bounded amount.
"""

from __future__ import annotations

# More elements than any browser sends (they send 3-5); the rest of a longer value is ignored.
MAX_ELEMENTS = 32

_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 section 8.4.1.3: x-gzip is gzip


def best_encoding(accept_encoding: bytes | str, available: tuple[str, ...]) -> str | None:
    """The coding of `available` the client prefers, or None to send the body as it is (identity).

    `available` lists lower-case coding names in the server's order of preference, which breaks ties
    between equal q-values. A coding with q=0 is never chosen; `*` stands for every coding the value does
    not name. None also when the client excludes identity too (`identity;q=0`) and accepts none of
    `available`: serving the body unencoded is then what RFC 9110 allows besides a 406, and it is what
    clients cope with.
    """
    weights = parse_accept_encoding(accept_encoding)
    star = weights.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in available:
        q = weights.get(coding, star)
        if q is not None and q > best_q:
            best, best_q = coding, q
    return best


def parse_accept_encoding(accept_encoding: bytes | str) -> dict[str, float]:
    """Coding (lower case) -> q-value for each readable element of an `Accept-Encoding` value.

    A coding named twice keeps its first q-value. Elements with an unreadable q-value are left out.
    """
    if isinstance(accept_encoding, bytes):
        accept_encoding = accept_encoding.decode("latin-1")
    weights: dict[str, float] = {}
    for element in accept_encoding.split(",", MAX_ELEMENTS)[:MAX_ELEMENTS]:
        coding, _, params = element.partition(";")
        coding = coding.strip().lower()
        coding = _ALIASES.get(coding, coding)
        if not coding or coding in weights:
            continue
        q = _q_value(params)
        if q is not None:
            weights[coding] = q
    return weights


def _q_value(params: str) -> float | None:
    """The q parameter of an element's parameters (1.0 when absent), None when it is not a valid qvalue
    (RFC 9110 section 12.4.2: 0 to 1 with at most three decimals)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() != "q":
            continue
        value = value.strip()
        if not 1 <= len(value) <= 5 or value[0] not in "01":
            return None
        if len(value) > 1 and (value[1] != "." or value.strip("0123456789.") or value.count(".") != 1):
            return None
        q = float(value)
        return q if q <= 1.0 else None
    return 1.0
