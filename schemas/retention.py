"""Retention: deleting whole expired days, by the writer, in one transaction.

Raw rows are kept for `Policy.raw` (a tenant's own `retention_days` may shorten it for
its series), the 1 m rollups for `Policy.minutes`, the 1 h and 1 d rollups for
`Policy.rollups`. Cutoffs are UTC midnights, never move back, and never pass what the
rollups cover: the job refreshes them first, so every deleted raw row's increase is
already in each tier. Each series keeps its last raw row before the cutoff, the previous
sample of its first one after it, so that one's delta stays exact. The highest seq and
batch are recorded in `meta`, so numbering never repeats even if their rows go.

DuckDB reuses the blocks a delete frees once a checkpoint has run (the writer runs one
before the job and one after it): under a rolling window the file stays flat;
`schemas.compact` shrinks it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from schemas import rollups
from schemas.rollups import DAY

# The last row of each series before a cutoff (its first row after it needs it). Over the
# rows before the cutoff only: after the first run, one day and the previous anchors.
_ANCHORS = """
SELECT arg_max(seq, (ts, seq)) FROM points
WHERE ts < to_timestamp($cutoff) AND ({series})
GROUP BY series_id
"""
_DOOMED = f"""
WHERE ts < to_timestamp($cutoff) AND ({{series}})
  AND (ts < to_timestamp($forget) OR seq NOT IN ({_ANCHORS}))
"""
_DELETE_POINTS = "DELETE FROM points " + _DOOMED
_DOOMED_BATCHES = "SELECT min(batch), max(batch) FROM points " + _DOOMED
_EVERY_SERIES = "TRUE"
_TENANT_SERIES = "series_id IN (SELECT id FROM series_keys WHERE tenant_id = $tenant)"
_DELETE_SCRAPES = "DELETE FROM scrapes WHERE ts < to_timestamp($cutoff) AND ({tenant})"
# An idempotency key lives as long as a row of its batch does. Only batches in the range of
# the deleted rows' can have lost their last row: scanning all of `points` for the rest
# took 620 ms of a 720k-row day's 680 here (`python -m bench retention` data).
_DELETE_KEYS = """
DELETE FROM ingest_events e
WHERE e.batch BETWEEN $lo AND $hi
  AND NOT EXISTS (SELECT 1 FROM points p WHERE p.batch = e.batch AND p.batch BETWEEN $lo AND $hi)
"""
_META = "UPDATE meta SET value = $value WHERE key = $key"
_CUTOFFS = """
SELECT max(CASE WHEN key = 'raw_from' THEN CAST(value AS BIGINT) END),
       max(CASE WHEN key = 'minute_from' THEN CAST(value AS BIGINT) END),
       max(CASE WHEN key = 'rollup_from' THEN CAST(value AS BIGINT) END),
       max(CASE WHEN key = 'retained_seq' THEN CAST(value AS BIGINT) END),
       max(CASE WHEN key = 'retained_batch' THEN CAST(value AS BIGINT) END)
FROM meta
"""


@dataclass(frozen=True)
class Policy:
    raw: timedelta
    minutes: timedelta
    rollups: timedelta
    tenants: Mapping[str, timedelta] = field(default_factory=dict)  # shorter raw windows


@dataclass(frozen=True)
class Cutoffs:
    """Epoch seconds (UTC midnights; 0: nothing deleted) before which rows are gone."""

    raw: int = 0
    minutes: int = 0
    rollups: int = 0
    tenants: Mapping[str, int] = field(default_factory=dict)  # later raw cutoffs


@dataclass(frozen=True)
class Retained:
    """What one run did."""

    cutoffs: Cutoffs
    points: int  # raw rows deleted
    rollups: int  # rollup rows deleted, every tier


def _day(ts: datetime) -> int:
    return int(ts.timestamp()) // DAY * DAY


def cutoffs(cur: duckdb.DuckDBPyConnection) -> Cutoffs:
    raw, minutes, kept_rollups, _, _ = cur.execute(_CUTOFFS).fetchall()[0]
    tenants = dict(cur.execute("SELECT tenant_id, raw_from FROM tenant_retention").fetchall())
    return Cutoffs(int(raw), int(minutes), int(kept_rollups), tenants)


def numbered(cur: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """The highest seq and batch a run recorded (their rows may be gone since)."""
    _, _, _, seq, batch = cur.execute(_CUTOFFS).fetchall()[0]
    return int(seq), int(batch)


def apply(
    cur: duckdb.DuckDBPyConnection,
    policy: Policy,
    now: datetime,
    head: tuple[int, int],
) -> Retained:
    """Refresh the rollups, then delete what `policy` no longer keeps; the caller runs this
    in its write transaction. `head` is the last committed seq and batch."""
    rollups.refresh(cur, now, head=head[0])
    covered = rollups.valid_until(cur) // DAY * DAY
    before = cutoffs(cur)
    raw = max(before.raw, min(_day(now - policy.raw), covered))
    minutes = max(before.minutes, min(_day(now - policy.minutes), raw))
    kept_rollups = max(before.rollups, min(_day(now - policy.rollups), minutes))
    tenants = {}
    for tenant_id, window in policy.tenants.items():
        cut = min(_day(now - window), covered)
        cut = max(cut, before.tenants.get(tenant_id, 0))
        if cut > raw:
            tenants[tenant_id] = cut
    for tenant_id, cut in before.tenants.items():  # a window made longer keeps its cutoff
        if tenant_id not in tenants and cut > raw:
            tenants[tenant_id] = cut
    _keep_minutes(cur, before, Cutoffs(raw, minutes, kept_rollups, tenants))
    deleted, batches = _delete_points(cur, raw, kept_rollups, _EVERY_SERIES, {})
    cur.execute(_DELETE_SCRAPES.format(tenant="TRUE"), {"cutoff": raw})
    for tenant_id, cut in tenants.items():
        args = {"tenant": tenant_id}
        n, theirs = _delete_points(cur, cut, kept_rollups, _TENANT_SERIES, args)
        deleted, batches = deleted + n, batches + theirs
        cur.execute(_DELETE_SCRAPES.format(tenant="tenant_id = $tenant"), {"cutoff": cut, **args})
    if batches:
        cur.execute(_DELETE_KEYS, {"lo": min(batches), "hi": max(batches)})
    rolled = 0
    for tier, cut in ((rollups.MINUTES, minutes), (rollups.HOURS, kept_rollups),
                      (rollups.DAYS, kept_rollups)):  # fmt: skip
        sql = f"DELETE FROM {tier.table} WHERE {tier.column} < to_timestamp($cutoff)"
        rolled += _count(cur.execute(sql, {"cutoff": cut}))
    for key, value in (("raw_from", raw), ("minute_from", minutes), ("rollup_from", kept_rollups),
                       ("retained_seq", head[0]), ("retained_batch", head[1])):  # fmt: skip
        cur.execute(_META, {"key": key, "value": str(value)})
    cur.execute("DELETE FROM tenant_retention")
    for tenant_id, cut in tenants.items():
        cur.execute("INSERT INTO tenant_retention VALUES ($t, $c)", {"t": tenant_id, "c": cut})
    return Retained(Cutoffs(raw, minutes, kept_rollups, tenants), deleted, rolled)


def _keep_minutes(cur: duckdb.DuckDBPyConnection, before: Cutoffs, after: Cutoffs) -> None:
    """The 1 m tier of the raw rows about to go (only the part it keeps): per tenant, the
    time from its old effective cutoff to its new one."""
    own = set(before.tenants) | set(after.tenants)
    moves = {t: (max(before.raw, before.tenants.get(t, 0)), max(after.raw, after.tenants.get(t, 0)))
             for t in own}  # fmt: skip
    others = "d.series_id NOT IN (SELECT id FROM series_keys WHERE list_contains($own, tenant_id))"
    start = max(before.raw, after.minutes)
    rollups.keep_minutes(cur, start, after.raw, others, {"own": sorted(own)})
    for tenant_id, (old, new) in moves.items():
        theirs = "d.series_id IN (SELECT id FROM series_keys WHERE tenant_id = $tenant)"
        rollups.keep_minutes(cur, max(old, after.minutes), new, theirs, {"tenant": tenant_id})


def _delete_points(
    cur: duckdb.DuckDBPyConnection, cutoff: int, forget: int, series: str, args: dict[str, str]
) -> tuple[int, list[int]]:
    """Delete rows of `series` before `cutoff`, each series' last one kept unless it is
    older than `forget` (the rollups' cutoff: nothing reads before it); how many, and the
    lowest and highest batch among them (none if none)."""
    if not cutoff:
        return 0, []
    params = {"cutoff": cutoff, "forget": forget, **args}
    lo, hi = cur.execute(_DOOMED_BATCHES.format(series=series), params).fetchall()[0]
    if lo is None:
        return 0, []
    return _count(cur.execute(_DELETE_POINTS.format(series=series), params)), [lo, hi]


def _count(result: duckdb.DuckDBPyConnection) -> int:
    row = result.fetchone()
    return int(row[0]) if row is not None else 0
