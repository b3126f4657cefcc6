"""How a recurring piece of work last went (a tick, an export, a rollup refresh, a
retention run): `/health` is degraded while its latest run failed, and the log says so
when that changes (the first failure with its traceback, then a line a minute while it
goes on, and a line when it works again), not once per run."""

import errno
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from schemas.times import rfc3339, utcnow

log = logging.getLogger("omnimetrics")

STILL_FAILING_LOG_SECONDS = 60.0
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the disk or the quota is full. DuckDB says
    it in its message only ("Could not write file ...: No space left on device")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return True
        if any(text in str(seen) for text in _FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe(exc: BaseException) -> str:
    """One line for `/health` and the log: the exception's type and message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class Outcome:
    """Runs and failures of one piece of work, and the latest failure while it lasts."""

    what: str  # e.g. "the export to the mirror", for the log and `/health`
    runs: int = 0
    failures: int = 0
    error: str | None = None  # the latest run's failure; None once a run succeeds
    failing_since: datetime | None = None
    _streak: int = 0
    _logged_at: float = field(default=-1e9)
    _unlogged: int = 0

    def succeeded(self) -> None:
        self.runs += 1
        if self.error is not None:
            log.warning("%s works again (%d failed runs since %s)", self.what, self._streak,
                        rfc3339(self.failing_since) if self.failing_since else "?")  # fmt: skip
        self.error, self.failing_since, self._streak, self._unlogged = None, None, 0, 0

    def failed(self, exc: BaseException) -> None:
        self.runs += 1
        self.failures += 1
        self._streak += 1
        now = time.monotonic()
        reason = describe(exc)
        if self.error is None:
            self.failing_since = utcnow()
            # A full disk is the operator's to fix, and says all in one line; anything
            # else may be ours, so the first failure of a streak carries its traceback.
            log.error("%s failed: %s", self.what, reason, exc_info=None if disk_full(exc) else exc)
            self._logged_at, self._unlogged = now, 0
        elif now - self._logged_at >= STILL_FAILING_LOG_SECONDS:
            log.error("%s still fails (%d more times since the last line): %s", self.what,
                      self._unlogged + 1, reason)  # fmt: skip
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1
        self.error = reason

    def report(self) -> dict[str, object]:
        """What `/health` shows of it."""
        return {
            "runs": self.runs,
            "failures": self.failures,
            "error": self.error,
            "failing_since": rfc3339(self.failing_since) if self.failing_since else None,
        }
