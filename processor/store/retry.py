"""The retry policy of the remote store adapters (tenacity).

Only ``TransientStoreError`` is retried: the adapters translate vendor errors first, so the policy
keys on our types, never on messages. Back-off is exponential with full jitter (a sleep drawn
uniformly from ``[0, min(max_backoff_s, base_backoff_s * 2**(attempt-1))]``), which spreads
workers that failed together instead of sending them back together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from processor.config import StoreSettings
from processor.errors import TransientStoreError

T = TypeVar("T")

log = logging.getLogger("processor.store")

#: Seconds: the back-off window before the first retry; it doubles per attempt up to ``max_backoff_s``.
DEFAULT_BASE_BACKOFF_S = 0.5
#: Attempts per request of a one-shot command (``for_command``): a person is waiting.
COMMAND_MAX_ATTEMPTS = 3
#: Seconds: the longest back-off sleep of a one-shot command.
COMMAND_MAX_BACKOFF_S = 1.0
#: Of each attempt's share of ``store.command_timeout_s``, the part the connect may take; the read
#: gets the rest (a store that accepts and never answers costs a read timeout per attempt).
COMMAND_CONNECT_SHARE = 1 / 3


def for_command(settings: StoreSettings) -> StoreSettings:
    """``settings`` sized for a one-shot command: every request, its retries and their back-off
    included, ends within ``settings.command_timeout_s`` when the store does not answer (a refused
    port ends sooner); a timeout or retry total configured lower stays lower."""
    attempts = min(settings.max_attempts, COMMAND_MAX_ATTEMPTS)
    backoff_s = min(settings.max_backoff_s, COMMAND_MAX_BACKOFF_S)
    per_attempt_s = (settings.command_timeout_s - (attempts - 1) * backoff_s) / attempts
    return settings.model_copy(update={
        "max_attempts": attempts,
        "max_backoff_s": backoff_s,
        "connect_timeout_s": min(settings.connect_timeout_s, per_attempt_s * COMMAND_CONNECT_SHARE),
        "read_timeout_s": min(settings.read_timeout_s, per_attempt_s * (1 - COMMAND_CONNECT_SHARE)),
    })


class RetryPolicy:
    """Run one store request, retrying ``TransientStoreError`` up to ``max_attempts`` attempts in all.

    Thread-safe: one policy serves every thread of a store. ``retries`` counts retries (not
    first attempts) over the policy's life, for metrics.
    """

    def __init__(
        self,
        max_attempts: int,
        max_backoff_s: float,
        *,
        base_backoff_s: float = DEFAULT_BASE_BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = min(base_backoff_s, max_backoff_s)
        self._sleep = sleep
        self._lock = threading.Lock()
        self.retries = 0

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.max_backoff_s)

    def call(self, fn: Callable[[], T], *, op: str, key: str | None = None) -> T:
        """``fn()``; on ``TransientStoreError`` sleep and call again; the last error propagates as is."""

        def before_sleep(state: RetryCallState) -> None:
            with self._lock:
                self.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            # The vendor cause (EndpointConnectionError, SlowDown, ...) says more than our wrapper.
            cause = exc.__cause__ if exc is not None and exc.__cause__ is not None else exc
            log.warning(
                "store_retry",
                extra={
                    "op": op,
                    "key": key,
                    "attempt": state.attempt_number,
                    "attempts": self.max_attempts,
                    "sleep_s": round(state.next_action.sleep if state.next_action else 0.0, 3),
                    "error_class": type(cause).__name__,
                    "error": str(exc),
                },
            )

        # A fresh Retrying per call: tenacity keeps per-call state on the object.
        retrying = Retrying(
            retry=retry_if_exception_type(TransientStoreError),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=self.base_backoff_s, max=self.max_backoff_s),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)
