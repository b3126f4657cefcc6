"""Which tier answers which time once retention has deleted raw rows, and the 422s and
503 for questions the kept data cannot answer exactly (the answers themselves are
compared with the view's in tests/ingest/test_retention.py)."""

from datetime import UTC, datetime, timedelta

import pytest

from query.history import Expired, Refreshing, plan
from schemas.rollups import DAYS, HOURS, MINUTES, Kept

DAY = timedelta(days=1)
RAW = datetime(2026, 11, 1, tzinfo=UTC)  # raw rows from here
KEPT = Kept(int(RAW.timestamp()), int((RAW - 10 * DAY).timestamp()),
            int((RAW - 100 * DAY).timestamp()))  # fmt: skip
VALID = int((RAW + 20 * DAY).timestamp())


def test_before_the_raw_cutoff_only_tiers_answer() -> None:
    start = RAW - 3 * DAY + timedelta(minutes=7)
    got = plan(start, RAW + DAY + timedelta(seconds=30), 60, VALID, KEPT)
    assert all(b <= RAW for tier, a, b in got.rolled if tier is MINUTES)
    assert [(t.table, a, b) for t, a, b in got.rolled] == [
        (MINUTES.table, start, RAW)]  # fmt: skip
    assert got.raw == [(RAW, RAW + DAY + timedelta(seconds=30))]
    # A day step: whole days from the day tier, its first partial day from hours and minutes.
    got = plan(start, RAW + 2 * DAY, 86_400, VALID, KEPT)
    tiers = {(t.column, a, b) for t, a, b in got.rolled}
    assert ("day", RAW - 2 * DAY, RAW) in tiers and ("day", RAW, RAW + 2 * DAY) in tiers
    assert ("hour", start.replace(minute=0) + timedelta(hours=1), RAW - 2 * DAY) in tiers
    assert ("minute", start, start.replace(minute=0) + timedelta(hours=1)) in tiers
    assert got.raw == []
    assert {t for t, _, _ in got.rolled} == {DAYS, HOURS, MINUTES}


@pytest.mark.parametrize(
    ("start", "step", "needle"),
    [
        (RAW - 200 * DAY, 3600, "nothing before 2026-07-24"),
        (RAW - 20 * DAY, 300, r"multiples of 3600 s \(the hour rollups\)"),
        (RAW - 20 * DAY + timedelta(minutes=30), 3600, "`from`: .* on a whole hour"),
        (RAW - 2 * DAY, 30, r"multiples of 60 s \(the minute rollups\)"),
        (RAW - 2 * DAY + timedelta(seconds=10), 60, "`from`: .* on a whole minute"),
    ],
)
def test_what_the_tiers_cannot_answer_is_a_clear_error(
    start: datetime, step: int, needle: str
) -> None:
    with pytest.raises(Expired, match=needle):
        plan(start, RAW + DAY, step, VALID, KEPT)


def test_an_end_before_the_cutoff_must_be_on_a_boundary_too() -> None:
    with pytest.raises(Expired, match="`to`: .* on a whole minute"):
        plan(RAW - 2 * DAY, RAW - DAY + timedelta(seconds=5), 60, VALID, KEPT)
    assert plan(RAW - 2 * DAY, RAW - DAY, 60, VALID, KEPT).raw == []


def test_rollups_waiting_for_a_refresh_before_the_cutoff_answer_503() -> None:
    stale = int((RAW - 5 * DAY).timestamp())  # a late row for some of the series
    with pytest.raises(Refreshing, match="retry in a minute"):
        plan(RAW - 7 * DAY, RAW + DAY, 3600, stale, KEPT)
    # Time after the stale hour, and time raw rows cover, is answered as ever.
    assert plan(RAW - 4 * DAY, RAW + DAY, 3600, VALID, KEPT).raw == []
    assert plan(RAW + DAY, RAW + 2 * DAY, 3600, stale, KEPT).rolled == []
