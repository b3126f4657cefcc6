"""A gateway's recent batches (`stream.sources.Recent`): from any cursor it holds, on a
batch's end or inside one, paging up to any bound gives every row after the cursor up to
the bound exactly once, in order, in pages of whole batches of about PAGE_ROWS rows."""

import random
from datetime import UTC, datetime

import pytest

from stream.batches import Batch, Block, Row
from stream.sources import Recent

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def batches(rng: random.Random, start: int) -> list[Batch]:
    """Batches of 1-7 rows each, seqs from start + 1, some seqs skipped (a failed write's)."""
    out, seq = [], start
    for number in range(30):
        seq += rng.choice([0, 0, 0, 2])
        rows = [Row(seq + i + 1, number, NOW, seq + i + 1, "local", None, None, "s", f"m{i}",
                    (), "gauge", float(i), None) for i in range(rng.randint(1, 7))]  # fmt: skip
        seq += len(rows)
        out.append(Batch(number, seq, Block.of_rows(rows), 0, len(rows), []))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_paging_recent_batches_gives_every_row_once_up_to_the_bound(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    page_rows = rng.choice([1, 5, 12])
    monkeypatch.setattr("stream.sources.PAGE_ROWS", page_rows)
    held = batches(rng, 100)
    recent = Recent(100, keep_rows=rng.choice([40, 10_000]))
    for i in range(0, len(held), 4):
        recent.add(held[i : i + 4], held[min(i + 3, len(held) - 1)].last_seq)
    all_rows = [(int(b.block.seq[k]), b) for b in held for k in range(b.lo, b.hi)]
    ends = [b.last_seq for b in held if b.last_seq > recent.start]
    bound = rng.choice(ends)
    after = rng.randrange(recent.start, bound)
    assert recent.page(recent.start - 1, bound) is None  # before what it holds
    got: list[int] = []
    position = after
    while position < bound:
        page = recent.page(position, bound)
        assert page is not None and page.start == position and page.end > position
        rows = [int(b.block.seq[k]) for b in page.batches for k in range(b.lo, b.hi)]
        assert len(page.batches) == 1 or len(rows) <= page_rows  # whole batches, a page
        got += rows
        position = page.end
    assert position == bound
    assert got == [seq for seq, _ in all_rows if after < seq <= bound]
