"""Waiting between attempts: exponential backoff with full jitter (reconnects, allowlist refreshes, audit shipping)."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: a random delay in [base/2, base], base doubling up to ``cap``."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next(self) -> float:
        base = min(self.cap, self.initial * 2.0**self.attempt)
        self.attempt += 1
        return base / 2 + random.random() * base / 2  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0
