"""
Text that others control (tag values, instance and account names, AWS error texts, run ids), made safe to
show in the notification, the manifest's change summary and XComs.

Tag authors in any scanned account choose names and tag values of any length and content. Before such a
value is shown it goes through :func:`clean`: control characters out, cut to a bounded length with an
ellipsis. ``changes.csv`` and the inventory CSV keep every value whole: they are the full record.
"""

from __future__ import annotations

import json
import re

# One value (a tag JSON, a name, an instance id, a field's old or new value), in characters.
MAX_VALUE_CHARS = 200
# A sentence that embeds values (an AWS error message, a reason, a URI), in characters.
MAX_TEXT_CHARS = 1000
# One line of a message, in characters: a backstop for lines that embed several values.
MAX_LINE_CHARS = 4000
ELLIPSIS = "\u2026"  # ends a value that was cut

# SNS Publish refuses a message above this many bytes of UTF-8 (256 KiB, message and attributes).
SNS_MESSAGE_LIMIT = 262_144
# The notification's cap, SNS's limit less a margin, in bytes of the Publish request's Message as the
# Amazon provider's SnsHook sends it (see published_size): what SNS counts.
MAX_MESSAGE_BYTES = 240_000
# SNS: a subject must be shorter than this many characters, with no line breaks or control characters.
SNS_SUBJECT_LIMIT = 100

# What never reaches a message: C0 controls (CR, LF, TAB, NUL ...), DEL, C1 controls (NEL ...), the line
# and paragraph separators, the bidirectional embeddings, overrides and isolates (which can make a line
# display in another order than it reads), and lone surrogates (which cannot be encoded as UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]+")


def _replace(match: re.Match[str]) -> str:
    # Line breaks and tabs become one space, so words stay apart; everything else just goes.
    return " " if any(c.isspace() for c in match.group()) else ""


def strip_controls(value: str) -> str:
    """``value`` without control characters, separators, bidi overrides or lone surrogates."""
    return _UNSAFE.sub(_replace, value)


def cut(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` if it fits in ``limit`` characters, else its start and an ellipsis (``limit`` in all)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS


def clean(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """
    A value as it may be shown: ``None`` is empty, anything else its text, with control characters
    removed (line breaks and tabs become a space) and cut to ``limit`` characters, the last an ellipsis.
    Printable text of any script, emoji included, is kept as it is.
    """
    if value is None:
        return ""
    return cut(strip_controls(value if isinstance(value, str) else str(value)), limit)


def utf8_size(value: str) -> int:
    """Bytes of ``value`` in UTF-8."""
    return len(value.encode("utf-8", "surrogatepass"))


def _json_cost(value: str) -> int:
    return len(json.dumps(value)) - 2  # without the quotes


_ENVELOPE = len(json.dumps({"default": ""}))


def published_size(message: str) -> int:
    """
    Bytes of ``message`` in a Publish request as the Amazon provider's ``SnsHook.publish_to_target`` sends
    it: inside JSON (``{"default": message}``, ``MessageStructure=json``) with every non-ASCII character
    escaped as ``\\uXXXX`` (an emoji as two), so text outside ASCII costs more than its UTF-8 bytes here.
    Never less than the message's UTF-8 size.
    """
    return len(json.dumps({"default": message}))


def line_cost(line: str) -> int:
    """What one line adds to :func:`published_size` of a message, with its line break."""
    return _json_cost(line) + _json_cost("\n")


def cut_published(message: str, limit: int) -> str:
    """
    ``message`` if its :func:`published_size` is at most ``limit``, else its longest start that fits, and
    an ellipsis (empty when not even that fits).
    """
    if published_size(message) <= limit:
        return message
    room = limit - _ENVELOPE - _json_cost(ELLIPSIS)
    if room < 0:
        return ""
    kept = 0
    for char in message:
        room -= _json_cost(char)
        if room < 0:
            break
        kept += 1
    return message[:kept] + ELLIPSIS
