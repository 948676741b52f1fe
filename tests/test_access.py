"""API keys and per-key limits, with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.access import ApiKey, KeyLimits, KeyStore, RateLimiter, key_digest, load_keys
from server.errors import AuthenticationError, RateLimitError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_authenticate_by_digest_only() -> None:
    store = KeyStore(load_keys(["sk-one", "sk-two"], None, KeyLimits()))
    assert store.enabled
    assert store.authenticate("sk-two").name == "key-2"
    with pytest.raises(AuthenticationError, match="Incorrect"):
        store.authenticate("sk-three")
    with pytest.raises(AuthenticationError, match="didn't provide"):
        store.authenticate(None)
    assert not KeyStore([]).enabled


def test_a_keys_file_holds_digests_names_and_limits(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f"""
[[keys]]
name = "alice"
key_sha256 = "{key_digest("sk-alice").hex()}"
requests_per_minute = 5
max_tokens = 64

[[keys]]
name = "bob"
key = "sk-bob"
"""
    )
    defaults = KeyLimits(requests_per_minute=100, max_concurrent=2)
    store = KeyStore(load_keys([], keys_file, defaults))
    alice = store.authenticate("sk-alice")
    assert alice.name == "alice"
    assert alice.limits == KeyLimits(requests_per_minute=5, max_concurrent=2, max_tokens=64)
    assert store.authenticate("sk-bob").limits == defaults


@pytest.mark.parametrize(
    "entry, message",
    [
        ('name = "x"', "exactly one of"),
        ('name = "x"\nkey = "a"\nkey_sha256 = "00"', "exactly one of"),
        ('name = "x"\nkey_sha256 = "abc"', "64 hex digits"),
        ('name = "x"\nkey = "a"\nrpm = 3', "unknown fields"),
    ],
)
def test_bad_key_entries_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f"[[keys]]\n{entry}\n")
    with pytest.raises(ValueError, match=message):
        load_keys([], keys_file, KeyLimits())


def _key(**limits: int) -> ApiKey:
    return ApiKey("k", key_digest("k"), KeyLimits(**limits))


def test_requests_per_minute_slide_with_the_window() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = _key(requests_per_minute=2)
    limiter.admit(key)
    clock.now += 10
    limiter.admit(key)
    with pytest.raises(RateLimitError) as refused:
        limiter.admit(key)
    assert refused.value.retry_after == 50  # until the first request leaves the window
    clock.now += 51
    limiter.admit(key)


def test_tokens_per_minute_count_when_requests_end() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = _key(tokens_per_minute=100)
    limiter.admit(key)
    limiter.record_tokens(key, 60)
    clock.now += 30
    limiter.admit(key)
    limiter.record_tokens(key, 50)
    with pytest.raises(RateLimitError, match="tokens per minute") as refused:
        limiter.admit(key)
    assert refused.value.retry_after == 30  # when the first 60 tokens leave the window
    clock.now += 31
    limiter.admit(key)


def test_tokens_that_would_not_fit_are_refused_and_not_counted() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = _key(tokens_per_minute=300)
    with pytest.raises(RateLimitError, match="more than") as too_big:
        limiter.check_tokens(key, 350)  # more than a minute's worth: never fits
    assert too_big.value.retry_after == 60
    limiter.check_tokens(key, 300)
    assert limiter.usage(key)[1:3] == (0, 0)  # checking counts nothing
    assert limiter.consume_tokens(key, 290)
    with pytest.raises(RateLimitError, match="tokens per minute") as refused:
        limiter.check_tokens(key, 20)
    assert refused.value.retry_after == 60
    limiter.check_tokens(key, 10)
    assert limiter.usage(key)[2] == 290
    # Tokens used count in full, over the limit too; the caller learns it is over.
    assert not limiter.consume_tokens(key, 11)
    assert limiter.usage(key)[2] == 301
    clock.now += 60
    limiter.check_tokens(key, 300)


def test_concurrency_is_released_when_requests_end() -> None:
    limiter = RateLimiter(Clock())
    key = _key(max_concurrent=1)
    limiter.admit(key)
    with pytest.raises(RateLimitError, match="running"):
        limiter.admit(key)
    limiter.release(key)
    limiter.admit(key)
    assert limiter.concurrent(key) == 1
