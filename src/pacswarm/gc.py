"""Eviction, the I/O side: run :func:`pacswarm.evict.choose` over the store and evict.

A running node evicts through :meth:`pacswarm.node.Node.evict` (store removal, then the
``evicted`` event: IPFS drops the blocks, the swarm stops announcing, the folders unlink),
the one path every removal takes. With the node stopped, ``pacswarm gc`` removes from the
store only; the store's journal (:meth:`Store.pending_removals`) makes the node tell the
other parts at its next start, so blocks and announcements never outlive a package.

When: at start, and shortly after packages enter the cache (debounced, so an upgrade of 200
packages runs the policy a few times, not 200). The delay also outlasts the verify window:
a client streaming a download that was just committed opens the cached file at the latest
when its window ends, and a file it has open stays readable after the unlink (Linux), so a
package bigger than the cap still reaches pacman whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pacswarm.config import Config
from pacswarm.errors import PacswarmError
from pacswarm.evict import Eviction, choose, format_size
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store

log = logging.getLogger(__name__)

#: Seconds after a commit (beyond the verify window) before the policy runs.
SETTLE = 2.0


@dataclass
class GcResult:
    """What one run freed (or would free, dry run): for the log, the CLI and ``/api/gc``."""

    dry_run: bool
    cap: int
    keep_versions: int
    before: int
    evicted: list[Eviction] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(e.entry.size for e in self.evicted)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cap": self.cap,
            "keep_versions": self.keep_versions,
            "before": self.before,
            "after": self.before - self.freed,
            "freed": self.freed,
            "evicted": [
                {
                    "path": str(_request_path(e)),
                    "size": e.entry.size,
                    "reason": e.reason,
                }
                for e in self.evicted
            ],
        }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The human summary of a :meth:`GcResult.to_json` (the CLI prints it)."""
    verb = "would free" if result["dry_run"] else "freed"
    lines = [
        f"{'would evict' if result['dry_run'] else 'evicted'} {e['path']} "
        f"({format_size(e['size'])}, {e['reason']})"
        for e in result["evicted"]
    ]
    lines.append(
        f"{verb} {_human(result['freed'])} in {len(result['evicted'])} package(s); cache "
        f"{_human(result['before'])} -> {_human(result['after'])} of a {_human(result['cap'])} "
        f"cap, {result['keep_versions']} version(s) kept per package"
    )
    return lines


def _human(size: int) -> str:
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def _request_path(eviction: Eviction) -> RequestPath:
    e = eviction.entry
    return RequestPath(e.repo, e.arch, e.filename, FileKind.PACKAGE)


def cache_cap(store: Store, config: Config) -> int:
    """``cache_max_size`` in bytes, a share resolved against the cache's filesystem now."""
    return config.cache_max_size.resolve(shutil.disk_usage(store.cache_dir).total)


def collect(
    store: Store, config: Config, evict: Callable[[RequestPath], None], *, dry_run: bool = False
) -> GcResult:
    """Run the policy once; ``evict`` each package it picks (nothing when ``dry_run``)."""
    cap = cache_cap(store, config)
    result = GcResult(dry_run, cap, config.keep_versions, store.cached_bytes())
    result.evicted = choose(store.eviction_entries(), config.keep_versions, cap)
    if dry_run:
        return result
    for eviction in result.evicted:
        rp = _request_path(eviction)
        log.info("evicting %s (%d bytes): %s", rp, eviction.entry.size, eviction.reason)
        evict(rp)
    if result.evicted:
        log.info("eviction freed %d bytes; the cache holds %d", result.freed, store.cached_bytes())
    return result


class Collector:
    """The running node's eviction: at start, after commits (debounced), and on request."""

    def __init__(self, store: Store, config: Config, evict: Callable[[RequestPath], None]) -> None:
        self.store = store
        self.config = config
        self.evict = evict
        self.delay = config.verify_window + SETTLE
        self._pending: asyncio.TimerHandle | None = None

    def resume(self) -> int:
        """Finish removals a crash (or ``pacswarm gc`` on the stopped node) left half told."""
        pending = self.store.pending_removals()
        for rp in pending:
            log.info("finishing the eviction of %s begun before this start", rp)
            self.evict(rp)
        return len(pending)

    def run(self, dry_run: bool = False) -> GcResult:
        return collect(self.store, self.config, self.evict, dry_run=dry_run)

    def poke(self, _: object = None) -> None:
        """A package entered the cache: run the policy soon (once for a burst of commits)."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.delay, self._due)

    def _due(self) -> None:
        self._pending = None
        try:
            self.run()
        except Exception:  # a failed run must not stop the next one
            log.exception("eviction failed; it runs again after the next download")

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


def collect_offline(config: Config, dry_run: bool) -> GcResult:
    """``pacswarm gc`` with no node running: evict from the data directory directly.

    Only the store changes; the journal leaves the rest (blocks, announcements, folders) to
    the node's next start. No recovery here: a node this command failed to reach may still
    be writing its temp files.
    """
    if not (config.data_dir / "node.json").exists():
        raise PacswarmError(
            f"{config.data_dir} is not a pacswarm data directory; pass the --data-dir (or "
            "--config) the node runs with"
        )
    store = Store(config.data_dir)
    with contextlib.closing(store):
        store.open()
        return collect(store, config, store.remove_package, dry_run=dry_run)
