"""Runner signatures: the trust anchor a shell on the agent's machine cannot forge.

The ledger (gitar/store/ledger.py) says what gitar wrote in this clone, but it is a file the
agent's own shell can write as well. A GPU runner the agent has no shell on (`gitar ci`)
holds an Ed25519 key and signs every record it writes; ground.json (user-owned, pinned
with the harness) lists the public keys of trusted runners in experiment.runner_keys.
A signed record cannot be edited (its val_bpb, its commit, anything) without the
signature failing, wherever the record travels.

- The key: a file holding the private key, `GITAR_RUNNER_KEY` or
  ~/.config/gitar/runner-key ($XDG_CONFIG_HOME respected), mode 0600. `gitar ci --init-key`
  creates it and prints the public key to put in ground.json; `gitar ci` creates it on
  first use and prints the same line.
- What is signed: the record as a JSON object without its `signature` field, in canonical
  form (sorted keys, no spaces, UTF-8): the same bytes however the line was escaped.
- The record carries `signature: {"key": <key id>, "sig": <base64>}`; the key id is the first
  16 hex digits of the sha256 of the raw public key.

cryptography is imported only where a key is used: review commands never pay for it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitar import shared
from gitar.config.schema import PUBLIC_PREFIX, parse_public
from gitar.errors import GitarError

_PRIVATE_PREFIX = "ed25519-private:"

# What a record's signature says, for verify and the check before judging.
TRUSTED = "trusted"  # signed by a key ground.json lists
UNSIGNED = "unsigned"
BAD = "bad"  # signed by a listed key, but the record was changed after signing (or the signature is damaged)
UNTRUSTED = "untrusted"  # a valid-looking signature by a key ground.json does not list


def key_path() -> Path:
    env = os.environ.get(shared.RUNNER_KEY)
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "gitar" / "runner-key"


def canonical(data: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the record without its signature, keys sorted, no spaces."""
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_text(public_raw: bytes) -> str:
    return PUBLIC_PREFIX + base64.b64encode(public_raw).decode("ascii")


@dataclass(frozen=True)
class Signer:
    private_raw: bytes
    public_raw: bytes
    path: Path

    @property
    def key_id(self) -> str:
        return key_id(self.public_raw)

    @property
    def public(self) -> str:
        return public_text(self.public_raw)

    def sign(self, data: dict[str, Any]) -> dict[str, str]:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        sig = Ed25519PrivateKey.from_private_bytes(self.private_raw).sign(canonical(data))
        return {"key": self.key_id, "sig": base64.b64encode(sig).decode("ascii")}


def load_key(path: Path | None = None) -> Signer | None:
    """The runner key at `path` (default key_path()), or None if there is none."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = path or key_path()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise GitarError(f"cannot read the runner key {path}: {e.strerror}") from None
    try:
        if not text.startswith(_PRIVATE_PREFIX):
            raise ValueError("no ed25519-private: prefix")
        raw = base64.b64decode(text[len(_PRIVATE_PREFIX):], validate=True)
        key = Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError as e:
        raise GitarError(f"{path} is not a gitar runner key ({e}); move it away and run "
                         "`gitar ci --init-key` to make a new one") from None
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Signer(raw, public, path)


def create_key(path: Path | None = None) -> Signer:
    """A new key at `path`, readable by its owner only; refuses to replace one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    path = path or key_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    try:
        # O_EXCL: two runners starting at once must not each write a key and trust the other's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = load_key(path)
        assert existing is not None
        return existing
    with os.fdopen(fd, "w") as f:
        f.write(_PRIVATE_PREFIX + base64.b64encode(raw).decode("ascii") + "\n")
    signer = load_key(path)
    assert signer is not None
    return signer


def load_or_create(path: Path | None = None) -> tuple[Signer, bool]:
    """The runner key, made on first use; True when it was just made."""
    found = load_key(path)
    if found is not None:
        return found, False
    return create_key(path), True


_active: Signer | None = None


@contextmanager
def signing(signer: Signer | None) -> Iterator[None]:
    """Every record NotebookWriter.append writes inside the block is signed with `signer`."""
    global _active
    before, _active = _active, signer
    try:
        yield
    finally:
        _active = before


def active() -> Signer | None:
    return _active


def check(data: dict[str, Any], trusted: tuple[str, ...]) -> tuple[str, str | None]:
    """(TRUSTED | UNSIGNED | BAD | UNTRUSTED, the key id it names) for one parsed record line."""
    sig = data.get("signature")
    if sig is None:
        return UNSIGNED, None
    if not isinstance(sig, dict) or not isinstance(sig.get("key"), str) or not isinstance(sig.get("sig"), str):
        return BAD, None
    kid: str = sig["key"]
    keys = {key_id(raw): raw for raw in (parse_public(t) for t in trusted)}
    if kid not in keys:
        return UNTRUSTED, kid
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(keys[kid]).verify(base64.b64decode(sig["sig"], validate=True),
                                                             canonical(data))
    except (InvalidSignature, ValueError):
        return BAD, kid
    return TRUSTED, kid
