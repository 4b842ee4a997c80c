"""API keys: who may call the server, for which models, how often, and who may load and unload adapters.

One key per line, in a file (`--api-keys FILE`) or the `TUNELAB_API_KEYS` variable (lines separated by newlines
or ';'):

    KEY [models=NAME,NAME] [rate=N/s|N/min] [admin]

KEY is the key itself, or `sha256:HEX`, its SHA-256 digest, so that the file need not hold the secret. Keys are
kept as digests and compared in constant time, every key every time, so the reply's timing says nothing of which
characters matched. A rate is a token bucket of N requests that refills at N per second or minute.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError

KEYS_VARIABLE = "TUNELAB_API_KEYS"
DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
RATE = re.compile(r"^(\d+(?:\.\d+)?)/(s|sec|second|min|minute)$")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass
class Key:
    digest: bytes
    label: str  # where it was read (file and line), for messages; never the key
    models: frozenset[str] | None = None  # None: every model
    rate: float | None = None  # requests per second; None: no limit
    burst: float = 0.0
    admin: bool = False
    _tokens: float = field(default=0.0, repr=False)
    _refilled: float = field(default=0.0, repr=False)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def wait(self, now: float) -> float:
        """Take one request from the bucket: 0 when allowed, else the seconds until one is."""
        if self.rate is None:
            return 0.0
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class Keys:
    def __init__(self, keys: list[Key]):
        self.keys = keys
        self._lock = threading.Lock()

    def find(self, presented: str) -> Key | None:
        """The key whose digest matches, comparing against all of them whatever matches first."""
        wanted, found = digest(presented), None
        for key in self.keys:
            if hmac.compare_digest(wanted, key.digest):
                found = key
        return found

    def wait(self, key: Key) -> float:
        with self._lock:
            return key.wait(time.monotonic())


def parse_keys(text: str, source: str) -> list[Key]:
    keys = []
    for number, line in enumerate(re.split(r"[\n;]", text), start=1):
        words = line.split("#", 1)[0].split()
        if words:
            keys.append(_parse_key(words, f"{source}: line {number}" if source != KEYS_VARIABLE else source))
    return keys


def _parse_key(words: list[str], where: str) -> Key:
    secret, *settings = words
    matched = DIGEST.match(secret)
    key = Key(bytes.fromhex(matched.group(1)) if matched else digest(secret), where)
    for setting in settings:
        name, _, value = setting.partition("=")
        if name == "admin" and not value:
            key.admin = True
        elif name == "models" and value:
            key.models = frozenset(filter(None, value.split(",")))
        elif name == "rate" and RATE.match(value):
            count, unit = RATE.match(value).groups()
            key.burst = max(float(count), 1.0)
            key.rate = float(count) / (1 if unit.startswith("s") else 60)
            key._tokens, key._refilled = key.burst, time.monotonic()
        else:
            raise TunelabError(f"{where}: cannot read '{setting}'; a key line is KEY [models=NAME,NAME] "
                               f"[rate=N/s|N/min] [admin]")
    return key


def read_keys(path: Path | None) -> Keys | None:
    """The keys of `path` and of $TUNELAB_API_KEYS together; None when neither gives one (an open server)."""
    keys = []
    if path is not None:
        if not path.is_file():
            raise TunelabError(f"no API key file at {path}: write one key per line (see `tunelab serve --help`)")
        keys += parse_keys(path.read_text(encoding="utf-8"), str(path))
        if not keys:
            raise TunelabError(f"{path} holds no API key: write one key per line")
    keys += parse_keys(os.environ.get(KEYS_VARIABLE, ""), KEYS_VARIABLE)
    return Keys(keys) if keys else None
