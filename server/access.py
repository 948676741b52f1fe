"""API keys and per-key limits.

Keys are kept only as sha256 digests: the keys file may hold digests instead of keys, and a
presented key is hashed and compared with every known digest in constant time, so neither
the comparison's timing nor the digest list reveals which key (or how much of one) matched.

Limits are per key: requests per minute, tokens per minute (prompt plus completion, counted
as they are used), concurrent requests, and the most tokens one completion may ask for.
Windows slide over the last 60 seconds. Over a limit, the answer is 429 with the seconds until
the window frees enough. A key is charged for what it was served: tokens a request would need
are checked before they are counted, so a refused request costs the key nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import AuthenticationError, RateLimitError

WINDOW_SECONDS = 60.0


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class KeyLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class ApiKey:
    """A known key: its name (used in logs, metrics and queue fairness), digest and limits.
    An ``admin`` key may also shorten a model's keep_alive (and so unload a shared model)."""

    name: str
    digest: bytes = field(repr=False)
    limits: KeyLimits = KeyLimits()
    admin: bool = False

    @property
    def identity(self) -> str:
        """Who owns what outlives a process (stored responses, saved KV states): the key
        itself, by its digest. Not its name: keys given without one are named by their
        order (``key-1``, ...), so a name passes to another key when the keys change."""
        return self.digest.hex()


class KeyStore:
    """The keys the server accepts. Empty: no authentication."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = list(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def keys(self) -> list[ApiKey]:
        return list(self._keys)

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer KEY`."
            )
        digest = key_digest(presented)
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: every request costs the same
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        return found


def load_keys(
    plain_keys: Iterable[str], keys_file: Path | None, defaults: KeyLimits
) -> list[ApiKey]:
    """Keys from ``--api-key``/``HEARTH_API_KEYS`` (named ``key-1``, ...) and the keys file."""
    keys = [
        ApiKey(f"key-{i}", key_digest(k), defaults) for i, k in enumerate(plain_keys, start=1) if k
    ]
    if keys_file is not None:
        with keys_file.open("rb") as fh:
            entries = tomllib.load(fh).get("keys", [])
        for i, entry in enumerate(entries, start=1):
            keys.append(_key_from_entry(entry, defaults, where=f"{keys_file} [[keys]] #{i}"))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError("API key names must be unique")
    return keys


def _key_from_entry(entry: dict[str, Any], defaults: KeyLimits, *, where: str) -> ApiKey:
    if ("key" in entry) == ("key_sha256" in entry):
        raise ValueError(f"{where}: set exactly one of `key` and `key_sha256`")
    if "key" in entry:
        digest = key_digest(str(entry["key"]))
    else:
        try:
            digest = bytes.fromhex(str(entry["key_sha256"]))
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"{where}: key_sha256 must be 64 hex digits")
    known = {"name", "key", "key_sha256", "admin", *KeyLimits.__dataclass_fields__}
    unknown = set(entry) - known
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
    limits = KeyLimits(
        **{
            name: entry.get(name, getattr(defaults, name))
            for name in KeyLimits.__dataclass_fields__
        }
    )
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where}: admin must be true or false")
    return ApiKey(str(entry.get("name") or where), digest, limits, admin=admin)


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_total: int = 0
    concurrent: int = 0
    # Since the server started, for the status view.
    requests_ever: int = 0
    tokens_ever: int = 0


class RateLimiter:
    """Per-key sliding windows. Used from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    def admit(self, key: ApiKey) -> None:
        """Count a new request, or raise :class:`RateLimitError`. Pair with :meth:`release`."""
        now = self._clock()
        usage = self._window(key.name, now)
        limits = key.limits
        if limits.max_concurrent is not None and usage.concurrent >= limits.max_concurrent:
            raise RateLimitError(
                f"API key '{key.name}' has {usage.concurrent} requests running, its limit",
                retry_after=1,
            )
        rpm = limits.requests_per_minute
        if rpm is not None and len(usage.requests) >= rpm:
            wait = usage.requests[len(usage.requests) - rpm] + WINDOW_SECONDS - now
            raise RateLimitError(
                f"API key '{key.name}' is over its limit of {rpm} requests per minute",
                retry_after=max(1, math.ceil(wait)),
            )
        tpm = limits.tokens_per_minute
        if tpm is not None and usage.token_total >= tpm:
            raise RateLimitError(
                f"API key '{key.name}' is over its limit of {tpm} tokens per minute",
                retry_after=max(1, math.ceil(self._token_wait(usage, tpm, now))),
            )
        usage.requests.append(now)
        usage.requests_ever += 1
        usage.concurrent += 1

    def release(self, key: ApiKey) -> None:
        usage = self._usage.get(key.name)
        if usage is not None and usage.concurrent > 0:
            usage.concurrent -= 1

    def record_tokens(self, key: ApiKey, tokens: int) -> None:
        if tokens > 0:
            usage = self._window(key.name, self._clock())
            usage.tokens.append((self._clock(), tokens))
            usage.token_total += tokens
            usage.tokens_ever += tokens

    def check_tokens(self, key: ApiKey, tokens: int = 0) -> None:
        """Raise :class:`RateLimitError`, counting nothing, if ``tokens`` more (a prompt about
        to be read, inputs about to be embedded) would take the key over its tokens per
        minute; with none, if it is over already."""
        tpm = key.limits.tokens_per_minute
        if tpm is None:
            return
        now = self._clock()
        usage = self._window(key.name, now)
        if usage.token_total + tokens <= tpm:
            return
        if tokens > tpm:  # no wait makes room for it
            raise RateLimitError(
                f"this request needs {tokens} tokens, more than API key '{key.name}' may use "
                f"in a minute ({tpm})",
                retry_after=int(WINDOW_SECONDS),
            )
        message = f"API key '{key.name}' is over its limit of {tpm} tokens per minute"
        if tokens:
            message = (
                f"API key '{key.name}' has too few of its {tpm} tokens per minute left for "
                f"this request's {tokens}"
            )
        # Room for them: the counted tokens down to tpm - tokens, below tpm - tokens + 1.
        wait = self._token_wait(usage, tpm - tokens + 1, now)
        raise RateLimitError(message, retry_after=max(1, math.ceil(wait)))

    def consume_tokens(self, key: ApiKey, tokens: int) -> bool:
        """Count ``tokens`` now, as a generation produces them; False once the key is over its
        tokens per minute, so that a long generation stops where it crosses the limit rather
        than being counted after it ends."""
        self.record_tokens(key, tokens)
        tpm = key.limits.tokens_per_minute
        usage = self._usage.get(key.name)
        return tpm is None or usage is None or usage.token_total <= tpm

    def usage(self, key: ApiKey) -> tuple[int, int, int, int]:
        """``key``'s requests and tokens since the start, tokens in the last minute, and
        requests running now."""
        usage = self._window(key.name, self._clock())
        return usage.requests_ever, usage.tokens_ever, usage.token_total, usage.concurrent

    def concurrent(self, key: ApiKey) -> int:
        usage = self._usage.get(key.name)
        return 0 if usage is None else usage.concurrent

    def _window(self, name: str, now: float) -> _Usage:
        usage = self._usage.setdefault(name, _Usage())
        cutoff = now - WINDOW_SECONDS
        while usage.requests and usage.requests[0] <= cutoff:
            usage.requests.popleft()
        while usage.tokens and usage.tokens[0][0] <= cutoff:
            usage.token_total -= usage.tokens.popleft()[1]
        return usage

    @staticmethod
    def _token_wait(usage: _Usage, limit: int, now: float) -> float:
        """Seconds until enough counted tokens leave the window to fall below ``limit``."""
        total = usage.token_total
        for stamp, count in usage.tokens:
            total -= count
            if total < limit:
                return stamp + WINDOW_SECONDS - now
        return WINDOW_SECONDS
