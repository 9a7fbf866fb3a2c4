"""Reading JSON configuration with one-line errors, and the typed checkers for its keys.

read_json() turns every way a file can be unreadable (missing, a directory, not UTF-8,
invalid JSON, a duplicate key, nested too deeply, too large) into one GitarError line that
names the file; parse_json() does the same for JSON read from git or a process. A Section
reads one object key by key, remembers which keys were used and rejects the rest with
a "did you mean"; the checkers (integer, number, string, choice, ...) each take
(section, key, value) and return the typed value or raise one line naming the dotted key.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gitar.errors import GitarError

T = TypeVar("T")

# A configuration file is a few hundred bytes of flat objects. Past these bounds it is a mistake
# or an attack: Python's parser would raise RecursionError (or recurse in every later reader)
# on 100,000 nested brackets, and read any size into memory.
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
_DEPTH_FAILURES = (RecursionError, MemoryError)


def parse_json(raw: bytes | str, name: str) -> Any:
    """Parse JSON from the repository or a process; every way it can fail is one GitarError line.

    Duplicate keys are refused, and so are files over MAX_JSON_BYTES, nesting deeper than
    MAX_JSON_DEPTH, and numbers the parser refuses (Python limits integers to 4300 digits).
    """
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > MAX_JSON_BYTES:
        raise GitarError(f"{name}: more than {MAX_JSON_BYTES} bytes; a configuration file is a few hundred")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GitarError(f"{name}: not UTF-8 text (byte {e.start}); save it as UTF-8 JSON") from None
    else:
        text = raw

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise GitarError(f'{name}: key "{k}" appears twice in one object; keep one')
            out[k] = v
        return out

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise GitarError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except _DEPTH_FAILURES:
        raise GitarError(f"{name}: nested too deeply (more than {MAX_JSON_DEPTH} levels of objects and "
                         "lists); a configuration file is flat") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise GitarError(f"{name}: a value the JSON parser refuses ({str(e).split(';')[0]})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise GitarError(f"{name}: nested too deeply (more than {MAX_JSON_DEPTH} levels of objects and lists); "
                         "a configuration file is flat")
    return value


def json_depth(value: Any) -> int:
    """How deeply objects and lists nest in a parsed value, without recursion (a scalar is 0)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest  # enough to refuse it
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(path: Path) -> Any:
    name = path.name
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)  # one byte more than allowed is enough to refuse it
    except FileNotFoundError:
        raise GitarError(f"{name}: file not found at {path}; create it (see README) or run from the workspace") from None
    except IsADirectoryError:
        raise GitarError(f"{name}: {path} is a directory, expected a JSON file") from None
    except OSError as e:
        raise GitarError(f"{name}: cannot read {path}: {e.strerror}") from None
    return parse_json(raw, name)


def describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    shown = json.dumps(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{shown} ({kind})"


class Section:
    """One JSON object being read: remembers which keys were used, to reject the rest."""

    def __init__(self, file: str, prefix: str, obj: Any) -> None:
        if not isinstance(obj, dict):
            where = prefix or "the top level"
            raise GitarError(f"{file}: {where}: expected an object, got {describe(obj)}")
        self.file, self.prefix, self.obj = file, prefix, obj
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def fail(self, k: str, msg: str) -> GitarError:
        return GitarError(f"{self.file}: {self.key(k)}: {msg}")

    def raw(self, k: str) -> Any:
        if k not in self.obj:
            near = difflib.get_close_matches(k, [x for x in self.obj if isinstance(x, str)], n=1)
            if near:
                raise GitarError(f'{self.file}: {self.key(near[0])}: unknown key; did you mean "{k}"?')
            raise GitarError(f"{self.file}: missing key {self.key(k)}; add it (see the shipped {self.file})")
        self.used.add(k)
        return self.obj[k]

    def section(self, k: str) -> Section:
        return Section(self.file, self.key(k), self.raw(k))

    def get(self, k: str, check: Callable[[Section, str, Any], T]) -> T:
        return check(self, k, self.raw(k))

    def optional(self, k: str, check: Callable[[Section, str, Any], T], default: T) -> T:
        # For keys added after workspaces were made: their ground.json is pinned, so it may lack them.
        return self.get(k, check) if k in self.obj else default

    def done(self) -> None:
        unknown = sorted(set(self.obj) - self.used)
        if unknown:
            k = unknown[0]
            near = difflib.get_close_matches(k, sorted(self.used), n=1)
            hint = f'; did you mean "{near[0]}"?' if near else "; remove it"
            raise self.fail(k, f"unknown key{hint}")


# Checkers: each takes (section, key, value) and returns the typed value or raises one line.


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[Section, str, Any], int]:
    def check(s: Section, k: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise s.fail(k, f"expected an integer, got {describe(v)}")
        if lo is not None and v < lo:
            raise s.fail(k, f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            raise s.fail(k, f"must be at most {hi}, got {v}")
        return v

    return check


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[Section, str, Any], float]:
    def check(s: Section, k: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise s.fail(k, f"expected a finite number, got {describe(v)}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise s.fail(k, f"must be {'greater than' if lo_open else 'at least'} {lo}, got {v}")
        if hi is not None and v > hi:
            raise s.fail(k, f"must be at most {hi}, got {v}")
        return float(v)

    return check


def string(nonempty: bool = True) -> Callable[[Section, str, Any], str]:
    def check(s: Section, k: str, v: Any) -> str:
        if not isinstance(v, str):
            raise s.fail(k, f"expected a string, got {describe(v)}")
        if nonempty and not v.strip():
            raise s.fail(k, "must not be empty")
        return v

    return check


def choice(options: tuple[str, ...]) -> Callable[[Section, str, Any], str]:
    def check(s: Section, k: str, v: Any) -> str:
        if v not in options:
            raise s.fail(k, f"must be one of {', '.join(options)}; got {describe(v)}")
        return str(v)

    return check


def boolean(s: Section, k: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise s.fail(k, f"expected true or false, got {describe(v)}")
    return v


def str_list(nonempty: bool = True) -> Callable[[Section, str, Any], tuple[str, ...]]:
    def check(s: Section, k: str, v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise s.fail(k, f"expected a list of non-empty strings, got {describe(v)}")
        if nonempty and not v:
            raise s.fail(k, "must not be empty")
        if len(set(v)) != len(v):
            raise s.fail(k, "lists an entry twice")
        return tuple(v)

    return check


def auto_or(inner: Callable[[Section, str, Any], T]) -> Callable[[Section, str, Any], T | None]:
    def check(s: Section, k: str, v: Any) -> T | None:
        return None if v == "auto" else inner(s, k, v)

    return check


def regex(s: Section, k: str, v: Any) -> str:
    pattern = string()(s, k, v)
    try:
        # The tokenizer uses a Rust regex with \p classes and possessive quantifiers that
        # Python's re only partly knows; check what Python can, i.e. balanced syntax.
        re.compile(pattern.replace(r"\p{L}", "a").replace(r"\p{N}", "0").replace("++", "+").replace("?+", "?"))
    except re.error as e:
        raise s.fail(k, f"not a valid regular expression: {e}") from None
    return pattern
