"""Hint sources: how a waiting worker learns that inputs arrived (``base.Wakeup``, ``base.Hint``).

``run.hints`` picks them; unset, a worker uses ``bucket`` (the rescan hint, which the API and
``processor submit`` write) and, on the local store, ``local`` (the folder watched by the OS).
Each source module imports only what it needs, when it is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from processor.config import Settings
from processor.errors import ConfigError
from processor.queue.hints.base import Hint, HintSource, Wakeup
from processor.queue.keys import KeyLayout
from processor.store.base import ObjectStore
from processor.store.local import LocalStore

__all__ = ["Hint", "HintSource", "Wakeup", "build_hint_sources", "chosen_hints"]


def chosen_hints(settings: Settings, store: ObjectStore) -> list[str]:
    """``run.hints``, or its default for ``store``: ``bucket``, and ``local`` on the local store."""
    if settings.run.hints is not None:
        return list(dict.fromkeys(settings.run.hints))
    return ["bucket", "local"] if isinstance(store, LocalStore) else ["bucket"]


def build_hint_sources(settings: Settings, store: ObjectStore, *, names: Sequence[str] | None = None,
                       local_root: Path | None = None) -> list[HintSource]:
    """The sources ``run.hints`` names (not started). ``ConfigError`` when one cannot run with this
    store or lacks its settings. ``local_root``: the folder to watch (default: the local store's)."""
    run, layout = settings.run, KeyLayout(settings.prefixes)
    sources: list[HintSource] = []
    for name in names if names is not None else chosen_hints(settings, store):
        if name == "bucket":
            from processor.queue.hints.bucket import RescanHintPoller

            sources.append(RescanHintPoller(store, layout, run.hint_poll_s))
        elif name == "local":
            root = local_root or (store.root if isinstance(store, LocalStore) else None)
            if root is None:
                raise ConfigError(f"run.hints: local watches the local store's folder, and the store is "
                                  f"{getattr(store, 'description', type(store).__name__)}; drop local from run.hints")
            from processor.queue.hints.local import LocalFolderWatcher

            sources.append(LocalFolderWatcher(Path(root), layout.prefixes.inputs))
        elif name == "seaweedfs":
            if settings.store.kind != "s3" or not settings.store.bucket:
                raise ConfigError("run.hints: seaweedfs follows a SeaweedFS S3 bucket; it needs store.kind s3 and "
                                  "store.bucket")
            if not run.seaweedfs_filer:
                raise ConfigError("run.hints: seaweedfs needs run.seaweedfs_filer, the filer's host:port "
                                  "(e.g. seaweedfs-filer:8888)")
            from processor.queue.hints.seaweedfs import FilerMetaTail

            sources.append(FilerMetaTail(run.seaweedfs_filer, settings.store.bucket, layout.prefixes.inputs))
        elif name == "sqs":
            if not run.sqs_queue_url:
                raise ConfigError("run.hints: sqs needs run.sqs_queue_url, the queue the bucket's event "
                                  "notifications go to")
            from processor.queue.hints.sqs import SqsNotifications
            from processor.store.sqs import SqsQueue

            sources.append(SqsNotifications(SqsQueue.from_settings(run.sqs_queue_url, settings.store),
                                            layout.prefixes.inputs, bucket=settings.store.bucket))
        else:
            raise ConfigError(f"run.hints: unknown hint source {name!r}; use bucket, local, seaweedfs or sqs")
    return sources
