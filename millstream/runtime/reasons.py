"""The reason of a dead letter: the kind of failure its error names, for grouping letters.

A dead letter's error is the text the runtime wrote when it gave up on the
message: ``retry.describe`` (``Type: what it said``), with a prefix saying
how it got there. Letters that failed the same way differ in their details
(an order id, an attempt count); the reason keeps the kind and drops them::

    IllegalTransition: order o-1: 'shipped' cannot ...  -> IllegalTransition
    attempts exhausted (4 of 4): OrderNotFound: no ...  -> attempts exhausted: OrderNotFound
    key function failed: KeyError: 'order_id'           -> key function failed: KeyError
    retry policy failed (ValueError()) on TypeError: x  -> retry policy failed: TypeError
    delivered 6 times without an outcome; the ...       -> delivered too often without an outcome

Text that follows none of these (another producer's, a hand-written
reason) is its own reason: its first line, at most ``REASON_LENGTH``
characters.
"""

from __future__ import annotations

import re

__all__ = ["REASON_LENGTH", "reason_of"]

REASON_LENGTH = 200

_TYPE = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?::\s|$)")
_PREFIXES = (
    (re.compile(r"attempts exhausted \(\d+ of \d+\): "), "attempts exhausted: "),
    (re.compile(r"key function failed: "), "key function failed: "),
    (re.compile(r"retry policy failed \(.*\) on ", re.DOTALL), "retry policy failed: "),
)
_WITHOUT_OUTCOME = re.compile(r"delivered \d+ times without an outcome")


def reason_of(error: str) -> str:
    """The kind of failure ``error`` (a dead letter's error text) names, without details."""
    if _WITHOUT_OUTCOME.match(error):
        return "delivered too often without an outcome"
    prefix = ""
    for pattern, name in _PREFIXES:
        found = pattern.match(error)
        if found is not None:
            prefix, error = name, error[found.end() :]
            break
    described = _TYPE.match(error)
    if described is not None:
        return prefix + described["type"]
    first_line = error.strip().splitlines()[0] if error.strip() else "(no reason given)"
    return (prefix + first_line)[:REASON_LENGTH]
