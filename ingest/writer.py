"""The single writer: every write to the database goes through here.

It runs on one dedicated thread with one cursor (DuckDB raises when threads share a
connection); what a transaction inserts is staged in `ingest.staging`. A tick is one batch
in one transaction; push requests that arrive while a write is in progress share the next
transaction (group commit: a transaction costs a few milliseconds here, a request's rows
far less), each request its own batch. Rows get `seq` numbers that increase for the life
of the database, and after the commit each batch is announced ("appended up to seq N") on
the event loop.
"""

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import duckdb
import numpy as np
import numpy.ma  # noqa: F401  (pyarrow's first NumPy conversion would import it)
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (so would the first `unique()`: not in the first push)

from ingest.series import DEFAULT_MAX_SERIES_PER_TENANT, Resolved, SeriesIndex, TooManySeries
from ingest.staging import (
    EXISTING_KEYS,
    SMALL_GROUP_ROWS,
    Appenders,
    Commit,
    EventKey,
    Events,
    Pushed,
    Request,
    Staged,
    expired,
    insert,
    keys_in,
    rows_in,
    scrapes_table,
    stage_known,
    tables_of,
    with_labels,
)
from schemas import retention, rollups
from schemas.db import Database
from schemas.outcomes import describe, disk_full
from schemas.rows import SampleRow, ScrapeRow, to_arrow
from schemas.signals import Appended, AppendSignal
from schemas.times import rfc3339, utcnow

T = TypeVar("T")

__all__ = [
    "Commit",
    "EventKey",
    "Events",
    "Expired",
    "Pushed",
    "TooManySeries",
    "WriteFailed",
    "Writer",
]


class WriteFailed(Exception):
    """The store could not make a write, and nothing of it was stored: `reason` says
    why, `disk_full` when the disk (or a quota) is full. Pushes answer 507 or 503."""

    def __init__(self, cause: BaseException) -> None:
        self.reason = describe(cause)
        self.disk_full = disk_full(cause)
        super().__init__(self.reason)


class Expired(Exception):
    """A pushed sample is older than its tenant keeps raw samples (422): storing it would
    change time the rollups already hold for good. Nothing of the request is stored."""

    def __init__(self, tenant_id: str, ts: datetime, cutoff: int) -> None:
        kept = rfc3339(datetime.fromtimestamp(cutoff, UTC))
        super().__init__(
            f"ts: {rfc3339(ts)} is before {kept}, from when tenant {tenant_id!r} keeps raw "
            "samples (retention); nothing of this request was stored"
        )


_Push = tuple[Request, "asyncio.Future[Commit | None]"]  # a push request and its answer
_Answer = tuple["asyncio.Future[Commit | None]", "Commit | BaseException | None"]


def _answer(signal: AppendSignal, appended: list[Appended], answers: list[_Answer]) -> None:
    """On the event loop, in one call from the writer's thread: the batches committed,
    announced in order, then each request's outcome (unless its client has gone)."""
    for one in appended:
        signal.publish(one)
    for done, outcome in answers:
        if done.done():
            continue
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)


class Writer:
    """Owns the one write connection. Start it, append through it, close it."""

    def __init__(
        self,
        db: Database,
        signal: AppendSignal,
        max_series_per_tenant: int = DEFAULT_MAX_SERIES_PER_TENANT,
        small_group_rows: int = SMALL_GROUP_ROWS,
        observe_commit: Callable[[float], None] | None = None,
    ) -> None:
        self._db = db
        self._observe_commit = observe_commit  # each transaction's seconds (`/metrics`)
        self._small_group_rows = small_group_rows  # pushes of up to this many rows, per row
        self.series = SeriesIndex(max_series_per_tenant)
        self._signal = signal
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="omnimetrics-writer"
        )
        self._con: duckdb.DuckDBPyConnection | None = None
        self._appenders: Appenders | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_seq = 1
        self._next_batch = 1
        self.last_error: str | None = None  # the latest write's failure, until one succeeds
        self.errors = 0  # failed transactions, since start
        self.transactions = 0  # committed, since start (group commit: fewer than batches)
        self.batches = 0  # committed, since start
        self.rows = 0
        self._pushes: list[_Push] = []
        self._pushes_lock = threading.Lock()
        self._drain_pending = False  # a drain is submitted that has not taken the pushes yet
        self.series_skipped = 0  # scraped samples left out: new series over a tenant's limit
        self.cutoffs = retention.Cutoffs()  # what retention deleted; pushes before it fail
        self.retained: retention.Retained | None = None  # the latest retention run

    @property
    def last_seq(self) -> int:
        """The highest committed seq (0 for an empty database)."""
        return self._next_seq - 1

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._executor.submit(fn))

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._run(self._open)

    def _open(self) -> None:
        self._con = self._db.cursor()
        self._appenders = Appenders(self._con)
        # Derived, not stored: nothing deletes the newest rows, so the maximum is durable.
        seq, batch = self._con.execute(
            "SELECT coalesce(max(seq), 0), coalesce(max(batch), 0) FROM points"
        ).fetchall()[0]
        self.series.load(self._con)
        (scrape_batch,) = self._con.execute(
            "SELECT coalesce(max(batch), 0) FROM scrapes"
        ).fetchall()[0]
        # Retention may have deleted the newest rows' predecessors, never their numbers.
        kept_seq, kept_batch = retention.numbered(self._con)
        self._next_seq = max(seq, kept_seq) + 1
        self._next_batch = max(batch, scrape_batch, kept_batch) + 1
        self.cutoffs = retention.cutoffs(self._con)

    async def append(
        self, samples: pa.Table | Sequence[SampleRow], scrapes: Sequence[ScrapeRow] = ()
    ) -> Commit | None:
        """Append one batch (a collection tick); None when there was nothing to write.
        Samples of new series over their tenant's limit are left out (`Commit.skipped`)."""
        table = samples if isinstance(samples, pa.Table) else to_arrow(samples)
        return await self._run(lambda: self._write(table, scrapes, [], drop_over_limit=True))

    async def append_events(self, events: Request) -> Commit | None:
        """Append one push request's events as one batch, skipping any whose key is
        already stored. Requests that arrive while a write is in progress are committed
        together in the next transaction (group commit), each still its own batch, all or
        nothing, and answered only once that transaction has committed."""
        if self._closing:  # refused (503), not lost: the client may send it again
            raise WriteFailed(RuntimeError("the server is shutting down"))
        done: asyncio.Future[Commit | None] = asyncio.get_running_loop().create_future()
        with self._pushes_lock:
            self._pushes.append((events, done))
            drain, self._drain_pending = not self._drain_pending, True
        if drain:  # one drain takes every push waiting when it starts: the requests this
            # round of the loop is still reading join it (it starts after them)
            asyncio.get_running_loop().call_soon(self._submit_drain)
        return await done

    def _submit_drain(self) -> None:
        with contextlib.suppress(RuntimeError):  # closed meanwhile: `close` drained them
            self._executor.submit(self._drain_pushes)

    def _drain_pushes(self) -> None:
        """Write every push waiting now in one transaction, with one insert per table for
        them all; a request that cannot be written (its series over the limit) fails
        alone. If the transaction itself fails, each request is retried in a transaction
        of its own, so one never sinks another. The requests are answered together, with
        one call into the event loop."""
        with self._pushes_lock:
            # A request whose client has gone is not written (a benign race: one cancelled
            # just after this look is written, as if it had gone a moment later).
            group = [(e, f) for e, f in self._pushes if not f.cancelled()]
            self._pushes.clear()
            self._drain_pending = False
        answers: list[_Answer] = []
        appended: list[Appended] = []
        try:
            appended = self._write_group(self._refuse_expired(group, answers), answers)
        finally:
            if (answers or appended) and self._loop is not None:
                self._loop.call_soon_threadsafe(_answer, self._signal, appended, answers)

    def _write_group(self, group: list[_Push], answers: list[_Answer]) -> list[Appended]:
        """The group's transaction, each request's outcome put in `answers`; what it
        committed (to announce, before the answers)."""
        if not group:
            return []
        con = self._connection()
        results: list[Staged | TooManySeries | None] = []
        try:
            results = self._stage_group(con, [events for events, _ in group])
            self._insert(con, [r for r in results if isinstance(r, Staged)])
        except Exception as exc:
            failed = self._failed(exc)
            if len(group) == 1:
                answers.append((group[0][1], failed))
                return []
            for events, done in group:  # one at a time: only the bad one fails
                try:
                    answers.append((done, self._write_events(events)))
                except Exception as alone:
                    answers.append((done, alone))
            return []
        appended = self._finish([r for r in results if isinstance(r, Staged)])
        for (_, done), result in zip(group, results, strict=True):
            answers.append((done, result if not isinstance(result, Staged) else result.commit))
        return appended

    def _refuse_expired(self, group: list[_Push], answers: list[_Answer]) -> list[_Push]:
        """The requests to write; each one with a sample before its tenant's raw cutoff
        fails alone (checked here, on the writer's thread, so retention cannot move the
        cutoff between the check and the commit)."""
        if not self.cutoffs.raw and not self.cutoffs.tenants:
            return group
        out = []
        for events, done in group:
            old = expired(events, self.cutoffs.raw, self.cutoffs.tenants)
            if old is None:
                out.append((events, done))
            else:
                answers.append((done, Expired(*old)))
        return out

    def _write_events(self, events: Request) -> Commit | None:
        """One request alone, in its own transaction."""
        con = self._connection()
        try:
            (result,) = self._stage_group(con, [events])
        except Exception as exc:
            raise self._failed(exc) from exc
        if isinstance(result, TooManySeries):
            raise result  # the request's own fault: the writer is fine
        return self._commit_one(con, result)

    def _stage_group(
        self, con: duckdb.DuckDBPyConnection, requests: Sequence[Request]
    ) -> list["Staged | TooManySeries | None"]:
        """Each request's batch, in order (None: nothing new to write; TooManySeries: it
        would pass its tenant's limit). Event ids already stored, or claimed by a request
        before it, are left out. Known series resolve for all requests at once; a group
        that brings new series resolves request by request, so the limit fails only the
        request that would pass it."""
        everything = [key for request in requests for key in filter(None, keys_in(request))]
        stored: set[EventKey] = set()
        if everything:
            params = {"tenants": [k[0] for k in everything], "ids": [k[1] for k in everything]}
            stored = {(t, e) for t, e in con.execute(EXISTING_KEYS, params).fetchall()}
        if sum(rows_in(request) for request in requests) <= self._small_group_rows:
            known = stage_known(
                requests, set(stored), self.series.known, self._next_batch, self._next_seq
            )
            if known is not None:
                return list(known)
        tables, keys_of = tables_of(requests, set(stored))
        together = self.series.resolve(pa.concat_tables(tables), drop_over_limit=True)
        if not together.new.num_rows and together.keep is None:
            # Every series is known (the usual case): one resolution, split by request.
            resolved, offset = [], 0
            for table in tables:
                ids = together.ids.slice(offset, table.num_rows)
                offset += table.num_rows
                resolved.append(Resolved(ids, None, together.new, [], Counter(), 0))
            return self._prepare_all(tables, keys_of, resolved)
        # New series: request by request, so the limit fails only the one that passes
        # it, and a failed request claims none of its event ids.
        out: list[Staged | TooManySeries | None] = []
        claimed = set(stored)
        for events in requests:
            (table,), (keys,) = tables_of([events], claimed)
            before = [s.resolved for s in out if isinstance(s, Staged)]
            try:
                one = self.series.resolve(table, False, before)
            except TooManySeries as exc:
                claimed.difference_update(keys)
                out.append(exc)
                continue
            out.append(self._prepare(table, [], keys, one, out))
        return out

    def _prepare_all(
        self,
        tables: list[pa.Table],
        keys_of: list[list[EventKey]],
        resolved: list[Resolved],
    ) -> list["Staged | TooManySeries | None"]:
        out: list[Staged | TooManySeries | None] = []
        for table, keys, one in zip(tables, keys_of, resolved, strict=True):
            out.append(self._prepare(table, [], keys, one, out))
        return out

    async def put_tenant_settings(self, tenant_id: str, settings_json: str) -> None:
        """Record new settings for a tenant (appended; the newest row is in force)."""

        def write() -> None:
            try:
                self._connection().execute(
                    "INSERT INTO tenant_settings VALUES ($tenant, $at, $doc)",
                    {"tenant": tenant_id, "at": utcnow(), "doc": settings_json},
                )
            except Exception as exc:
                raise self._failed(exc) from exc
            self.last_error = None

        await self._run(write)

    async def refresh_rollups(self, now: datetime) -> int:
        """Materialize closed hours into `rollup_hourly` (one transaction)."""

        def write() -> int:
            con = self._connection()
            con.begin()
            try:
                until = rollups.refresh(con, now, head=self.last_seq)
                con.commit()
            except BaseException:
                # A commit that failed has already ended the transaction; its error is
                # the one to report, not the rollback's "no transaction is active".
                with contextlib.suppress(duckdb.Error):
                    con.rollback()
                raise
            return until

        return await self._run(write)

    async def retain(self, policy: retention.Policy, now: datetime) -> retention.Retained:
        """Refresh the rollups and delete what `policy` no longer keeps, in one transaction,
        between two checkpoints so the freed blocks are reused (a checkpoint that fails
        because readers hold the database now is left to DuckDB's next automatic one)."""

        def write() -> retention.Retained:
            con = self._connection()
            # Rows appended since the last checkpoint are in the WAL: folded into the file
            # first, the checkpoint after the deletes reuses their freed blocks in place.
            # (Both at once grew the file by a third at the first deleting run, measured
            # with `python -m bench retention`; this way by 6%, then not at all.)
            with contextlib.suppress(duckdb.Error):
                con.execute("CHECKPOINT")
            con.begin()
            try:
                done = retention.apply(con, policy, now, (self.last_seq, self._next_batch - 1))
                con.commit()
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.rollback()
                raise
            self.cutoffs, self.retained = done.cutoffs, done
            if done.points or done.rollups:
                with contextlib.suppress(duckdb.Error):
                    con.execute("CHECKPOINT")
            return done

        return await self._run(write)

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("writer is not started")
        return self._con

    def _write(
        self,
        table: pa.Table,
        scrapes: Sequence[ScrapeRow],
        keys: Sequence[EventKey],
        drop_over_limit: bool = False,
    ) -> Commit | None:
        """One batch in one transaction."""
        con = self._connection()
        table = with_labels(table)
        resolved = self.series.resolve(table, drop_over_limit)
        return self._commit_one(con, self._prepare(table, scrapes, keys, resolved, []))

    def _commit_one(self, con: duckdb.DuckDBPyConnection, one: Staged | None) -> Commit | None:
        """Insert one batch in a transaction of its own, then announce it."""
        staged = [one] if one is not None else []
        try:
            self._insert(con, staged)
        except Exception as exc:
            raise self._failed(exc) from exc
        appended = self._finish(staged)
        if appended and self._loop is not None:
            self._loop.call_soon_threadsafe(_answer, self._signal, appended, [])
        return one.commit if one is not None else None

    def _prepare(
        self,
        table: pa.Table,
        scrapes: Sequence[ScrapeRow],
        keys: Sequence[EventKey],
        resolved: Resolved,
        staged: Sequence["Staged | TooManySeries | None"],
    ) -> "Staged | None":
        """One batch's rows, numbered after the batches `staged` before it in the same
        transaction; None when there is nothing to write."""
        if resolved.keep is not None:
            table = table.filter(pa.array(resolved.keep))
        n = table.num_rows
        if n == 0 and not scrapes and not keys:
            return None
        last = next((s.commit for s in reversed(staged) if isinstance(s, Staged)), None)
        batch = last.batch + 1 if last is not None else self._next_batch
        first = last.last_seq + 1 if last is not None else self._next_seq
        points = pa.table(
            {
                "seq": pa.array(np.arange(first, first + n, dtype=np.int64)),
                "batch": pa.array(np.full(n, batch, dtype=np.int64)),
                "ts": table.column("ts"),
                "series_id": resolved.ids,
                "kind": table.column("kind").cast(pa.string()),
                "value": table.column("value"),
            }
        )
        commit = Commit(batch, first, first + n - 1, n, resolved.skipped)
        scraped = scrapes_table(batch, scrapes) if scrapes else None
        tenants = frozenset(table.column("tenant_id").unique().to_pylist()) if n else frozenset()
        last_ts = table.column("ts")[n - 1].as_py() if n else None
        return Staged(commit, tenants, last_ts, resolved, points, scraped, list(keys))

    def _insert(self, con: duckdb.DuckDBPyConnection, staged: Sequence[Staged]) -> None:
        started = time.perf_counter()
        assert self._appenders is not None  # made with the connection
        insert(con, self._appenders, staged)
        if self._observe_commit is not None:
            self._observe_commit(time.perf_counter() - started)

    def _failed(self, exc: Exception) -> WriteFailed:
        """A write failed (`insert` has rolled it back): record why, for `/health`."""
        failed = exc if isinstance(exc, WriteFailed) else WriteFailed(exc)
        self.last_error = failed.reason
        self.errors += 1
        return failed

    def _finish(self, staged: Sequence["Staged"]) -> list[Appended]:
        """The transaction holding `staged` committed: remember its series, move the
        counters on; what to announce of each batch (the caller posts it to the loop, so
        the stream hears of every commit even if the request that asked was cancelled)."""
        self.last_error = None
        committed_at = time.time()
        self.transactions += 1
        appended = []
        for one in staged:
            c = one.commit
            self.batches += 1
            self.rows += c.rows
            self.series.confirm(one.resolved)
            self.series_skipped += one.resolved.skipped
            self._next_seq = c.last_seq + 1
            self._next_batch = c.batch + 1
            if c.rows and one.last_ts is not None:
                appended.append(Appended(c.batch, c.first_seq, c.last_seq, one.last_ts,
                                         one.tenants, committed_at))  # fmt: skip
        return appended

    async def close(self) -> None:
        # Pushes handed over before this still commit (the writer's thread takes work in
        # order); later ones are refused.
        self._closing = True
        if self._con is not None:
            await self._run(self._drain_pushes)
            await self._run(self._close_connection)
        self._executor.shutdown(wait=True)

    def _close_connection(self) -> None:
        self._appenders = None  # they hold the connection (and nothing unflushed)
        if self._con is not None:
            self._con.close()
            self._con = None
