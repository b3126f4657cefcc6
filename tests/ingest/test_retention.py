"""Retention through the writer, on simulated days: raw rows older than the window go
(each series keeps its last one before the cutoff), increases over that time still come
exactly from the rollups, the file stays flat while days roll on, pushes before the
cutoff are refused, and a tenant's own shorter window deletes only its rows."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ingest.writer import Expired, Writer
from query.history import Expired as ExpiredQuestion
from query.history import increase_table
from query.mirror import export_new, listed_files, mirror_dir
from schemas.db import Database
from schemas.models import SampleFilters
from schemas.retention import Policy
from schemas.rows import SAMPLE_SCHEMA, SampleRow
from schemas.signals import AppendSignal

pytestmark = pytest.mark.anyio

START = datetime(2026, 6, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)
SERIES = 40  # per tenant
TENANTS = ("a", "b")
POLICY = Policy(timedelta(days=30), timedelta(days=30), timedelta(days=400))


def day_table(day: int, rng: np.random.Generator, totals: np.ndarray) -> pa.Table:
    """One simulated day of counters, every 5 minutes; a few restart (drop to a small
    value) and some are `delta` samples, whose increments are their values."""
    ticks = int(timedelta(days=1) / STEP)
    n = len(TENANTS) * SERIES
    stamps, values = [], []
    for t in range(ticks):
        totals += rng.integers(0, 20, n)
        restart = rng.random(n) < 0.002
        totals[restart] = rng.integers(0, 5, int(restart.sum()))
        stamps.append(np.full(n, int((START + day * timedelta(days=1) + t * STEP).timestamp())))
        values.append(totals.copy())
    kinds = np.array(["counter" if i % 8 else "delta" for i in range(n)], dtype=object)
    value = np.concatenate(values).astype(float)
    delta = np.tile(kinds == "delta", ticks)
    value[delta] = rng.integers(0, 20, int(delta.sum()))
    return pa.table(
        {
            "ts": pa.array(np.concatenate(stamps) * 1_000_000, pa.timestamp("us", tz="UTC")),
            "tenant_id": np.tile(np.repeat(TENANTS, SERIES), ticks),
            "tool_id": pa.nulls(n * ticks, pa.string()),
            "session_id": pa.nulls(n * ticks, pa.string()),
            "source": np.tile([f"s{i % SERIES}" for i in range(n)], ticks),
            "metric": pa.array(["m"] * (n * ticks)),
            "kind": np.tile(kinds, ticks),
            "value": value,
        }
    ).cast(SAMPLE_SCHEMA.remove(SAMPLE_SCHEMA.get_field_index("labels")))


async def fill(writer: Writer, days: range, rng: np.random.Generator, totals: np.ndarray) -> None:
    for day in days:
        await writer.append(day_table(day, rng, totals))


@asynccontextmanager
async def simulated(
    path: Path, days: int, seed: int
) -> AsyncIterator[tuple[Database, Writer, np.random.Generator, np.ndarray]]:
    """A writer over `days` simulated days from START, rolled up as of just after them;
    the generator and counter totals go on for more days."""
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    rng, totals = np.random.default_rng(seed), np.zeros(len(TENANTS) * SERIES)
    try:
        await fill(writer, range(days), rng, totals)
        await writer.refresh_rollups(START + timedelta(days=days, minutes=10))
        yield db, writer, rng, totals
    finally:
        await writer.close()
        db.close()


def day_answers(db: Database, tenant: str | None, step: int, days: int) -> dict[datetime, float]:
    filters = SampleFilters(metric="m", tenant_id=tenant)
    end = START + timedelta(days=days)
    table = db.read_sync(lambda c: increase_table(c, filters, [], START, end, step))
    return {r["t"]: r["value"] for r in table.to_pylist()}


def answers_between(
    db: Database, tenant: str, step: int, start: datetime, end: datetime
) -> dict[datetime, float]:
    filters = SampleFilters(metric="m", tenant_id=tenant)
    table = db.read_sync(lambda c: increase_table(c, filters, [], start, end, step))
    return {r["t"]: r["value"] for r in table.to_pylist()}


def raw_before(db: Database, cutoff: datetime, tenant: str | None = None) -> int:
    sql = "SELECT count(*) FROM samples WHERE ts < $c AND ($t IS NULL OR tenant_id = $t)"
    (n,) = db.read_sync(lambda c: c.execute(sql, {"c": cutoff, "t": tenant}).fetchall())[0]
    return int(n)


def export(db: Database) -> Path:
    """Export to the mirror now, deleting unlisted files at once; the mirror's folder."""
    mirror = mirror_dir(db.path)
    db.read_sync(lambda c: export_new(c, mirror, db.epoch, grace=0))
    return mirror


def mirrored(db: Database, tenant: str) -> tuple[int, datetime | None]:
    """How many rows of `tenant` the mirror lists, and the oldest one's time."""
    mirror = mirror_dir(db.path)
    files = [str(p) for p in listed_files(mirror)]
    sql = """
    SELECT count(*), min(p.ts) FROM read_parquet($files) p
    JOIN read_parquet($series) k ON k.id = p.series_id WHERE k.tenant_id = $t
    """
    series = str(next((mirror / "series").glob("*.parquet")))
    args = {"files": files, "series": series, "t": tenant}
    count, first = db.read_sync(lambda c: c.execute(sql, args).fetchall())[0]
    return int(count), first


def size(db: Database) -> int:
    db.read_sync(lambda c: c.execute("CHECKPOINT"))
    return db.path.stat().st_size


async def test_sixty_days_then_ten_more(tmp_path: Path) -> None:
    async with simulated(tmp_path / "r.duckdb", 60, 3) as (db, writer, rng, totals):
        now = START + timedelta(days=60, minutes=10)
        # Idempotency keys go with their samples: pushes on days 4, 5 and 50 (day 5's is
        # its series' last before the cutoff, kept).
        for day in (4, 5, 50):
            keyed = SampleRow(START + timedelta(days=day), "a", None, None, "keyed", "m",
                              "delta", 3.0)  # fmt: skip
            await writer.append_events([(("a", f"e{day}"), [keyed])])
        by_day = day_answers(db, None, 86_400, 60)
        by_hour = day_answers(db, "a", 3600, 60)
        assert sum(by_day.values()) > 0 and sum(by_hour.values()) > 0
        mirror = export(db)
        assert len(list(mirror.glob("points/day=*"))) == 60

        done = await writer.retain(POLICY, now)
        cutoff = START + timedelta(days=30)
        keys = db.read_sync(lambda c: c.execute("SELECT event_id FROM ingest_events").fetchall())
        assert sorted(keys) == [("e5",), ("e50",)]
        # The mirror drops the expired day folders (their files once no reader can be
        # using them: at once here), and keeps the rest.
        export(db)
        assert sorted(p.name for p in mirror.glob("points/day=*"))[0] == "day=2026-07-01"
        assert len(list(mirror.glob("points/day=*"))) == 30
        assert mirrored(db, "a") == (30 * 288 * SERIES + 1, cutoff)  # and the day-50 push
        assert done.cutoffs.raw == int(cutoff.timestamp())
        # Every series keeps one row before the cutoff: its first one after needs it.
        kept = len(TENANTS) * SERIES + 1  # and the keyed series' (day 5)
        assert raw_before(db, cutoff) == kept
        assert done.points == 30 * 288 * len(TENANTS) * SERIES + 2 - kept  # and day 4's
        assert day_answers(db, None, 86_400, 60) == by_day
        assert day_answers(db, "a", 3600, 60) == by_hour
        # Before the cutoff only the 1 h and 1 d tiers are left (by default the 1 m tier is
        # kept no longer than raw rows: none): a 5-minute step there is refused, with why.
        first = START + timedelta(days=29, hours=23)
        window = (first, first + timedelta(hours=2))
        with pytest.raises(ExpiredQuestion, match="multiples of 3600 s"):
            db.read_sync(lambda c: increase_table(c, SampleFilters(metric="m"), [], *window, 300))
        # A push before the cutoff is refused whole; one after it is stored.
        old = SampleRow(cutoff - timedelta(hours=1), "a", None, None, "s1", "m", "counter", 1.0)
        new = SampleRow(cutoff + timedelta(hours=1), "a", None, None, "s1", "m", "counter", 1.0)
        with pytest.raises(Expired, match="keeps raw samples"):
            await writer.append_events([(None, [new]), (None, [old])])
        assert raw_before(db, cutoff) == kept

        # Ten more days, one at a time, each followed by the job: the file stays flat.
        sizes = [size(db)]
        for day in range(60, 70):
            await writer.append(day_table(day, rng, totals))
            await writer.retain(POLICY, START + timedelta(days=day + 1, minutes=10))
            sizes.append(size(db))
        assert max(sizes) <= sizes[0] * 1.1, sizes
        assert raw_before(db, START + timedelta(days=40)) == kept
        later = day_answers(db, None, 86_400, 60)
        assert later == by_day  # the rollups still answer for the first 60 days


async def test_a_tenant_window_deletes_only_its_rows(tmp_path: Path) -> None:
    async with simulated(tmp_path / "t.duckdb", 20, 5) as (db, writer, rng, totals):
        now = START + timedelta(days=20, minutes=10)
        hours = {t: day_answers(db, t, 3600, 20) for t in TENANTS}
        window = (START + timedelta(days=12, hours=23), START + timedelta(days=13, hours=1))
        minutes = {t: answers_between(db, t, 60, *window) for t in TENANTS}
        export(db)
        policy = Policy(POLICY.raw, POLICY.minutes, POLICY.rollups, {"b": timedelta(days=7)})
        done = await writer.retain(policy, now)
        cutoff = START + timedelta(days=13)
        assert done.cutoffs.raw == int((START - timedelta(days=10)).timestamp())
        assert done.cutoffs.tenants == {"b": int(cutoff.timestamp())}
        assert raw_before(db, cutoff, "a") == 13 * 288 * SERIES
        assert raw_before(db, cutoff, "b") == SERIES
        # The mirror's hours before b's cutoff are written anew without b's rows.
        export(db)
        assert mirrored(db, "a") == (20 * 288 * SERIES, START)
        assert mirrored(db, "b") == (7 * 288 * SERIES, cutoff)
        assert {t: day_answers(db, t, 3600, 20) for t in TENANTS} == hours
        # Tenant b's minutes before its cutoff come from the 1 m tier (materialized from
        # its rows just before they went), a's from rows: the same answers.
        assert {t: answers_between(db, t, 60, *window) for t in TENANTS} == minutes
        with pytest.raises(ExpiredQuestion, match="whole multiples of 60 s"):
            db.read_sync(lambda c: increase_table(
                c, SampleFilters(metric="m", tenant_id="b"), [], *window, 30))  # fmt: skip
        # A late push for a (before b's cutoff) is stored, and the refresh it causes
        # rebuilds from there without touching b's rollups.
        late = SampleRow(cutoff - timedelta(days=2), "a", None, None, "late", "m", "delta", 7.0)
        await writer.append_events([(None, [late])])
        with pytest.raises(Expired):
            await writer.append_events([(None, [late._replace(tenant_id="b")])])
        await writer.refresh_rollups(now + timedelta(minutes=5))
        assert day_answers(db, "b", 3600, 20) == hours["b"]
        assert sum(day_answers(db, "a", 3600, 20).values()) == sum(hours["a"].values()) + 7


async def test_minute_rollups_kept_longer_than_raw_rows_answer_whole_minutes(
    tmp_path: Path,
) -> None:
    async with simulated(tmp_path / "m.duckdb", 30, 9) as (db, writer, rng, totals):
        now = START + timedelta(days=30, minutes=10)
        # Days 12-14 are past the raw window (10 d) but in the minute tier's (20 d); day 5
        # in neither: only hours there.
        recent = (START + timedelta(days=12, hours=22), START + timedelta(days=14, hours=3))
        old = (START + timedelta(days=5), START + timedelta(days=6))
        before = {step: answers_between(db, "a", step, *recent) for step in (60, 300, 3600)}
        hours = answers_between(db, "a", 3600, *old)
        policy = Policy(timedelta(days=10), timedelta(days=20), timedelta(days=400))
        done = await writer.retain(policy, now)
        assert done.cutoffs.raw == int((START + timedelta(days=20)).timestamp())
        assert done.cutoffs.minutes == int((START + timedelta(days=10)).timestamp())
        assert raw_before(db, START + timedelta(days=20)) == len(TENANTS) * SERIES
        after = {step: answers_between(db, "a", step, *recent) for step in (60, 300, 3600)}
        assert after == before
        assert answers_between(db, "a", 3600, *old) == hours
        with pytest.raises(ExpiredQuestion, match="multiples of 3600 s"):
            answers_between(db, "a", 60, *old)
        # The next day's run moves both cutoffs on by a day and keeps the answers.
        await writer.retain(policy, now + timedelta(days=1))
        assert {step: answers_between(db, "a", step, *recent) for step in (60, 3600)} == {
            step: before[step] for step in (60, 3600)}  # fmt: skip


async def test_numbering_survives_deleting_every_row(tmp_path: Path) -> None:
    path = tmp_path / "n.duckdb"
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    row = SampleRow(START, "a", None, None, "s", "m", "gauge", 1.0)
    commit = await writer.append([row, row._replace(metric="n")])
    assert commit is not None
    far = START + timedelta(days=900)
    await writer.retain(POLICY, far)
    assert raw_before(db, far) == 0  # even the last rows: older than every rollup kept
    await writer.close()
    db.close()
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    again = await writer.append([row._replace(ts=far)])
    assert again is not None and again.first_seq == commit.last_seq + 1
    assert again.batch == commit.batch + 1
    await writer.close()
    db.close()
