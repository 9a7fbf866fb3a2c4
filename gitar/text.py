"""Untrusted text: the rules for what the agent may write, and how gitar shows what anyone wrote.

The agent and the code it writes are untrusted, so every string gitar stores or prints
on their behalf (descriptions, hypotheses, lessons, commit messages, train.py's output,
any field of a record, which a forged note can fill with anything) is hostile text.

- Input: check_text() is the one rule for the free text gitar accepts (a description, a
  hypothesis, a lesson, a commit message's subject): one line, visible characters only,
  a bounded length. A refusal is one line naming the argument and what to do.
- Output: safe() renders any text for a terminal; json_line() writes any value as one
  line of JSON. Neither lets a character through that a terminal acts on or that hides
  or reorders text (see hidden()), so no escape sequence reaches a reader, and no line
  break inside a field can start a fake line (a fake `Notes (gitar):` block, a fake
  result line) in `gitar log`, `gitar show` or `git log --notes`.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from gitar.errors import GitarError

DESCRIPTION_CHARS = 200  # a commit subject: what changed, in one line; the why goes in the hypothesis
NOTE_CHARS = 500  # a hypothesis or a lesson: a few sentences, on one line

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def hidden(ch: str) -> bool:
    """A character a terminal acts on, or one that is invisible or reorders the text around it.

    Exactly the characters str.isprintable() rejects, minus the spaces (Zs: U+00A0, U+3000…,
    which show as a gap): C0 and C1 controls, DEL, line and paragraph separators (U+2028,
    U+2029, U+0085 is C1), format characters (Cf: bidi controls U+202A–U+202E, U+2066–U+2069,
    U+200E, U+200F, U+061C, zero-width characters, tags), surrogates, private use and
    unassigned code points.
    """
    return not ch.isprintable() and unicodedata.category(ch) != "Zs"


def escape_char(ch: str) -> str:
    """A visible stand-in: \\n, \\t, \\r, \\x1b, \\u202e, \\U000e0041."""
    named = _NAMED.get(ch)
    if named is not None:
        return named
    c = ord(ch)
    if c < 0x100:
        return f"\\x{c:02x}"
    if c < 0x10000:
        return f"\\u{c:04x}"
    return f"\\U{c:08x}"


def safe(text: str) -> str:
    """The text as one terminal line: every hidden() character (line breaks included) as its escape.

    Everything else is kept as written (é, 中, emoji, backslashes), so ordinary text reads
    unchanged; the result never holds a control, format or separator character. Applied to
    each line gitar prints from a record, a commit or a log, at the point it is printed.
    """
    if text.isprintable():  # nearly every line: one pass in C, nothing to do
        return text
    return "".join(escape_char(ch) if hidden(ch) else ch for ch in text)


def _json_escape(ch: str) -> str:
    c = ord(ch)
    if c < 0x10000:
        return f"\\u{c:04x}"
    c -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters beyond the BMP
    return f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04x}"


def json_line(value: Any) -> str:
    """value as one line of JSON: non-ASCII text kept readable, every hidden() character escaped.

    json.dumps(ensure_ascii=False) escapes only U+0000–U+001F, '"' and '\\': DEL, C1 controls,
    bidi controls and U+2028/U+2029 would reach `git log --notes` raw. Outside strings JSON is
    printable ASCII, so escaping what is left is always inside a string and reads back as the
    same value with any JSON parser (old lines, written raw, still parse too).
    """
    line = json.dumps(value, ensure_ascii=False)
    if line.isprintable():
        return line
    return "".join(_json_escape(ch) if hidden(ch) else ch for ch in line)


@dataclass(frozen=True)
class Rule:
    what: str  # how a refusal names the argument
    limit: int  # characters, after surrounding whitespace is removed
    hint: str  # what to do instead


DESCRIPTION = Rule("the description", DESCRIPTION_CHARS, 'say what you changed in one line: gitar try "what I changed"')
HYPOTHESIS = Rule("--hypothesis", NOTE_CHARS, 'say in one line why it should help: --hypothesis "why"')
LESSON = Rule("the lesson", NOTE_CHARS, 'say in one line what it taught: gitar learn REV "what it taught"')
SUBJECT = Rule("the commit message's first line", DESCRIPTION_CHARS,
               "it is the experiment's description: say what you changed in one line")


def check_text(text: str, rule: Rule) -> str:
    """The text without surrounding whitespace, or one line saying why it is refused (exit 2)."""
    value = text.strip()
    if not value:
        raise GitarError(f"{rule.what} is empty; {rule.hint}")
    for i, ch in enumerate("" if value.isprintable() else value):
        if hidden(ch):
            raise GitarError(f"{rule.what} holds {_name(ch)} at character {i + 1}: line breaks, control and "
                             f"invisible characters are refused; {rule.hint}")
    if len(value) > rule.limit:
        raise GitarError(f"{rule.what} has {len(value)} characters, more than {rule.limit}; {rule.hint}")
    return value


def _name(ch: str) -> str:
    c = ord(ch)
    name = "a line break" if ch in "\n\r\x85\u2028\u2029" else unicodedata.name(ch, "")
    return f"U+{c:04X}" + (f" ({name})" if name else "")


def subject(message: str) -> str:
    """A commit message's first non-blank line: the description of the experiment it is."""
    for line in message.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def check_message(message: str) -> str:
    """A commit message on an experiment branch: its subject obeys the description rule, its body

    holds no control or invisible character but tabs (git log prints a message raw). Returns
    the subject.
    """
    first = check_text(subject(message), SUBJECT)
    body = message.strip().split("\n")[1:]
    for n, line in enumerate(body, 2):
        bad = next((ch for ch in line.rstrip("\r") if ch != "\t" and hidden(ch)), None)
        if bad is not None:
            raise GitarError(f"the commit message's line {n} holds {_name(bad)}: control and invisible "
                             "characters are refused; write plain visible text")
    return first
