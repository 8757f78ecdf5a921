"""The project's one exception tree.

::

    ProcessorError
    ├── FatalError                 the process cannot go on: exit non-zero (cog: a dead worker)
    │   ├── ConfigError            unreadable config, unknown key, bad value (EXIT_CONFIG)
    │   │   └── TrainingDataError  ``finetune``: too few usable training images, or none found
    │   ├── StoreAccessError       bad credentials, missing bucket, access denied (EXIT_STORE)
    │   ├── ModelUnavailableError  a configured model is missing from the cache in offline mode
    │   └── WorkerUnhealthy        run.max_consecutive_failures StageFailed items in a row: the worker,
    │                              not its inputs, is likely broken; it stops and exits (EXIT_UNHEALTHY)
    ├── StoreError                 one store operation failed (translated once, at the adapter)
    │   ├── TransientStoreError    timeouts, 5xx, throttling, connection resets: retried (tenacity)
    │   ├── ObjectNotFound         the key does not exist
    │   ├── PreconditionFailed     a conditional write (If-None-Match / If-Match) lost its race
    │   ├── ObjectTooLarge         a GET refused before reading a body over ``max_bytes``
    │   ├── InvalidKey             a key the store cannot represent safely ("..", empty segments)
    │   └── ObjectUnreadable       this one object cannot be read by us; the bucket is fine
    │       ├── ObjectAccessDenied   403 on one object (a per-object policy, a KMS key we may not use)
    │       └── ObjectEncrypted      the object needs a customer-provided key (SSE-C) we do not have
    ├── ClaimLost                  another worker holds our claim now; stop spending work on it
    └── ItemError                  one input failed: becomes a failure record, the worker goes on
        ├── InvalidInput           the input itself is bad; ``hint`` says what the user should change
        │   ├── UnsupportedFormat
        │   ├── CorruptImage
        │   ├── ImageTooLarge
        │   ├── ImageTooSmall
        │   ├── DecodeBudgetExceeded  decoding took more CPU than ``pipeline.decode`` allows; stopped
        │   ├── InvalidSidecar
        │   └── InputUnreadable    the input (or its sidecar) exists but we may not read it
        ├── InputVanished          the input was deleted between the listing and its GET
        ├── StyleUnavailable       a style it asks for cannot load on the worker that took it (an extra
        │                          or a model missing there): the operator's problem, never final; the
        │                          input waits for a worker that can run the style
        ├── StageFailed            a pipeline stage crashed on this input (a bug or a model fault)
        └── JobCancelled           not a failure: the job was cancelled while it computed; the worker
                                   records the cancel (``processor.queue.cancel``), never a failure

Per-item failures (``ItemError``) and process failures (``FatalError``) are different types on
purpose: the worker records the first and carries on; it exits on the second. Retries key on
these types, never on message strings.

Object-scoped and bucket-scoped refusals are told apart once, in the adapters: a refusal of the
credentials themselves (unknown key, bad signature, expired token), of the bucket (missing,
disabled) or of a LIST is ``StoreAccessError`` (fatal: nothing will work); a refusal of a GET or
HEAD on one key is ``ObjectUnreadable``, which the worker turns into that input's
``InputUnreadable`` failure record and goes on. Refused writes stay fatal: a worker that may not
write results cannot write a failure record either.
"""

from __future__ import annotations

# Every exit code the CLI uses, one each (deploy/base/job.yaml's podFailurePolicy keys on them).
# 2 is argparse's, for a usage error; none of ours reuses it.

#: Exit code of ``process`` when some files failed (each has a ``.failed.json`` beside its outputs).
EXIT_SOME_FAILED = 1
#: Exit code of a usage error (an unknown flag, a missing argument): argparse's own.
EXIT_USAGE = 2
#: Exit code for a bad or unreadable configuration (Kubernetes podFailurePolicy fails the index on it).
EXIT_CONFIG = 3
#: Exit code for a store that refuses us (credentials, bucket, permissions).
EXIT_STORE = 4
#: Exit code for a model missing in offline mode.
EXIT_MODEL = 5
#: Exit code when ``doctor`` found a problem.
EXIT_DOCTOR = 6
#: Exit code of a worker whose circuit breaker tripped (``WorkerUnhealthy``). Kubernetes should
#: restart or retry it (a new process gets a fresh CUDA context), never fail the Job for it.
EXIT_UNHEALTHY = 7
#: Exit code of ``run --once`` when the store kept failing and some inputs are still without a
#: result (also any command whose store calls ran out of retries). Worth a retry, later.
EXIT_INCOMPLETE = 8
#: Exit code of ``run --once`` stopped by SIGTERM or SIGINT while inputs were still without a result:
#: it finished the item in hand and released its other claims, but it is not done. Non-zero, so a
#: Kubernetes Indexed Job runs the index again instead of counting it complete.
EXIT_STOPPED = 9
#: Exit code after SIGINT (Ctrl-C): 128 + the signal number, as shells report it.
EXIT_INTERRUPTED = 130


class ProcessorError(Exception):
    """Base of every error this project raises on purpose."""


class FatalError(ProcessorError):
    """The process cannot continue; the CLI prints the message and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(FatalError):
    exit_code = EXIT_CONFIG


class TrainingDataError(ConfigError):
    """``processor finetune`` cannot train on what it found: the message lists each skipped file
    and why, and says what to add or fix."""


class StoreAccessError(FatalError):
    """Credentials rejected, bucket missing, or access denied: no retry will help."""

    exit_code = EXIT_STORE


class ModelUnavailableError(FatalError):
    exit_code = EXIT_MODEL


class WorkerUnhealthy(FatalError):
    """Too many ``StageFailed`` items in a row: the fault is likely the worker's (a poisoned CUDA
    context, a bad deploy), so it stops taking work, gives its claims back and exits, leaving the
    items it failed with retryable failure records for a healthy worker."""

    exit_code = EXIT_UNHEALTHY


class StoreError(ProcessorError):
    """One store operation failed. ``key`` is the object involved, when there is one."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class TransientStoreError(StoreError):
    """Worth retrying: timeouts, 5xx, throttling, dropped connections."""


class ObjectNotFound(StoreError):
    pass


class PreconditionFailed(StoreError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


class ObjectTooLarge(StoreError):
    """``get(max_bytes=...)`` found a larger object; nothing was read."""

    def __init__(self, message: str, *, key: str | None = None, size: int = 0) -> None:
        super().__init__(message, key=key)
        self.size = size


class InvalidKey(StoreError):
    """The key cannot be stored safely (``..`` or empty segments on a file system, say)."""


class ObjectUnreadable(StoreError):
    """The object exists but this worker may not read it; other objects are unaffected."""


class ObjectAccessDenied(ObjectUnreadable):
    """403 on a GET/HEAD of one key while the credentials and the bucket are fine (a per-object
    policy, an ACL, or a KMS key whose ``kms:Decrypt`` the worker lacks)."""


class ObjectEncrypted(ObjectUnreadable):
    """The object is encrypted with a customer-provided key (SSE-C) that the worker does not hold."""


class ClaimLost(ProcessorError):
    """Our claim on an input was taken over (we were paused past its TTL): stop working on it."""


class ItemError(ProcessorError):
    """One input failed. ``hint`` tells the user what to change; the worker records it and moves on."""

    hint: str = "Check the input and upload it again."

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class JobCancelled(ItemError):
    """The job was cancelled (``DELETE /v1/jobs/{id}``) while the worker computed it: raised from
    the engines' progress hook at their next step, to stop the work. An ``ItemError`` so that the
    stages let it through as they let an input's own failure through; the worker records a cancel
    for it, never a failure record, and it never counts against the worker's health."""

    hint = "Upload the photo again to have it processed."

    def __init__(self, message: str, *, progress: dict[str, object] | None = None) -> None:
        super().__init__(message)
        #: The progress the engine reported when it stopped (``stage``, ``step``, ``steps``, ...).
        self.progress = dict(progress or {})


class InvalidInput(ItemError):
    """The input is bad; retrying the same bytes will never help."""


class UnsupportedFormat(InvalidInput):
    hint = "Upload a JPEG, PNG, WebP or HEIC photo."


class CorruptImage(InvalidInput):
    hint = "The file could not be decoded; upload the original photo again."


class ImageTooLarge(InvalidInput):
    hint = "Downscale the photo or raise the limit named in the message."


class ImageTooSmall(InvalidInput):
    hint = "Upload a larger photo or lower the limit named in the message."


class DecodeBudgetExceeded(InvalidInput):
    """Decoding the file took more CPU seconds than its budget (``pipeline.decode.cpu_floor_s`` plus
    ``cpu_s_per_megapixel`` per megapixel) and was stopped. Final: the same bytes cost the same.
    ``cpu_s`` is what the decode had spent when it was stopped (None when the kernel's CPU limit
    stopped it rather than the decoder's own watchdog)."""

    hint = ("Save the picture again the usual way (a JPEG or PNG export from a camera, phone or editor) "
            "and upload that; its structure (thousands of scans, chunks, frames or pages) makes it too slow "
            "to decode. An operator may raise pipeline.decode.cpu_s_per_megapixel.")

    def __init__(self, message: str, *, budget_s: float, cpu_s: float | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.budget_s = budget_s
        self.cpu_s = cpu_s


class InvalidSidecar(InvalidInput):
    hint = "Fix the sidecar JSON next to the photo (or delete it) and upload it again."


class InputUnreadable(InvalidInput):
    """The input, or its sidecar, exists but the store refuses to let this worker read it.

    An ``InvalidInput`` (one attempt, a final record, never counted by the circuit breaker): the
    same object stays unreadable until someone changes its permissions or encryption; then
    ``processor retry --all --error InputUnreadable`` requeues it."""

    hint = ("Let the worker's credentials read this object (bucket policy, ACL, KMS key grant) or "
            "upload it again without customer-provided encryption (SSE-C), then run "
            "`processor retry --all --error InputUnreadable` (or upload the photo again).")


class InputVanished(ItemError):
    """The input was listed, then deleted before the worker read it (the user removed it).

    Its failure record says so, and is never final (no ``failed`` done marker): an upload under
    the same key later, even of the same bytes and so the same ETag, is processed like any
    other. It is not the input's fault and not the worker's, so the circuit breaker ignores it
    (only the compute stage feeds the breaker)."""

    hint = "Nothing to do if it was deleted on purpose; upload it again to have it processed."


class StyleUnavailable(ItemError):
    """A style the input asks for (its sidecar's ``styles``, a background, the captioner its styles
    need) cannot load on the worker that took it: its engine's extra is not installed there, or its
    model is missing from that worker's cache. The operator's problem, not the photo's.

    Its failure record is never final and counts no attempt (``permanent: false``, ``final: false``,
    no ``failed`` done marker): the worker that wrote it leaves the input alone until it restarts,
    and any worker that can load the style takes it at its next scan. ``styles`` names what could
    not load. Never counted by the circuit breaker: the worker runs its other styles fine."""

    hint = ("Operator: make the style loadable on a worker (install the extra or `processor models pull` "
            "the model the message names) and start or restart that worker; the job then runs by itself. "
            "`processor retry --error StyleUnavailable` (or Retry) makes running workers look again at once.")

    def __init__(self, message: str, *, styles: tuple[str, ...] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.styles = styles


class StageFailed(ItemError):
    """A stage crashed on this input; the message names the stage."""

    hint = "This is likely a bug or a model problem; report it with the failure record."
