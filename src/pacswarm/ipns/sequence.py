"""The IPNS sequence counter, persisted: the one piece of :mod:`pacswarm.ipns` that does I/O.

Why it must survive restarts: resolvers keep the record with the highest Sequence, so a node
that restarted at 0 would publish records every peer and DHT node silently ignores until the
old ones expire (48 h). The file holds one decimal number; each write goes to a temp file that
is fsynced and renamed over the old one, so a crash leaves the old value or the new, never a
torn one. A file that cannot be read is an error, not a reset to 0, for the same reason.
One node process owns a data directory, so no cross-process lock is taken.
"""

from __future__ import annotations

import os
from pathlib import Path

from pacswarm.errors import PacswarmError

MAX_SEQUENCE = 2**64 - 1


class SequenceError(PacswarmError):
    """The sequence file exists but cannot be used; the message says how to recover."""


class SequenceCounter:
    """A counter in ``path`` that only grows: :meth:`next` for each new record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def current(self) -> int:
        """The last sequence number handed out (0 if none ever was)."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            raise SequenceError(f"cannot read IPNS sequence file {self.path}: {e}") from e
        if not text.isdigit() or int(text) > MAX_SEQUENCE:
            raise SequenceError(
                f"IPNS sequence file {self.path} holds {text[:40]!r}, not a number; "
                "write a number higher than the last published sequence into it "
                "(a lower one makes peers ignore new records)"
            )
        return int(text)

    def next(self) -> int:
        """One more than :meth:`current`, stored before it is returned."""
        value = self.current() + 1
        if value > MAX_SEQUENCE:
            raise SequenceError(f"IPNS sequence in {self.path} is exhausted (2**64-1)")
        self._write(value)
        return value

    def observe(self, seen: int) -> None:
        """Remember a sequence seen on the network for our own name (e.g. after data loss),
        so the next record outbids it. Never lowers the counter."""
        if not 0 <= seen <= MAX_SEQUENCE:
            raise SequenceError(f"sequence {seen} is outside 0 .. 2**64-1")
        if seen > self.current():
            self._write(seen)

    def _write(self, value: int) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{value}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SequenceError(f"cannot write IPNS sequence file {self.path}: {e}") from e
