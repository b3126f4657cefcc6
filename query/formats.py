"""One answer, four encodings: JSON (default), CSV, Arrow IPC stream, Parquet.

Chosen by `?format=` or else the `Accept` header. Arrow and Parquet keep real timestamps
for analysts; JSON and CSV write RFC 3339 UTC strings.
"""

import io
from collections.abc import Callable
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from starlette.responses import Response

from schemas.http import JSONResponse
from schemas.nested import json_number

Format = Literal["json", "csv", "arrow", "parquet"]

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
_ACCEPTED = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}


def negotiate(requested: str | None, accept: str | None) -> str:
    """`?format=` wins; else the first media type in `Accept` we serve; else JSON."""
    if requested:
        return requested
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ACCEPTED:
            return _ACCEPTED[media]
    return "json"


def rfc3339_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps as `2026-01-13T10:30:45.123Z` strings."""
    utc = column.cast(pa.timestamp("us", tz="UTC"))
    millis = utc.cast(pa.timestamp("ms", tz="UTC"), safe=False)
    return pc.strftime(millis, format="%Y-%m-%dT%H:%M:%SZ")


def _with_text_times(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(i, field.name, rfc3339_column(table.column(i)))
    return table


def _utc(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(
                i, field.name, table.column(i).cast(pa.timestamp("us", tz="UTC"))
            )
    return table


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows for a JSON body: label maps as objects, non-finite numbers as strings."""
    rows: list[dict[str, Any]] = table.to_pylist()
    maps = [f.name for f in table.schema if pa.types.is_map(f.type)]
    odd = [
        f.name
        for f in table.schema
        if pa.types.is_floating(f.type)
        and not pc.all(pc.is_finite(table.column(f.name)), skip_nulls=True).as_py()
    ]
    for row in rows if maps or odd else ():
        for name in maps:
            if row[name] is not None:
                row[name] = dict(row[name])
        for name in odd:
            if row[name] is not None:
                row[name] = json_number(row[name])
    return rows


def _labels_as_json(table: pa.Table) -> pa.Table:
    """Label maps as JSON object text, for CSV (which has no maps)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_map(field.type):
            texts = [None if m is None else orjson.dumps(dict(m)).decode()
                     for m in table.column(i).to_pylist()]  # fmt: skip
            table = table.set_column(i, field.name, pa.array(texts, pa.string()))
    return table


def encode(
    table: pa.Table, fmt: str, as_json: Callable[[list[dict[str, Any]]], Any], name: str
) -> Response:
    """The response for `table` in `fmt`; `as_json` shapes the JSON body from its rows."""
    if fmt == "json":
        return JSONResponse(as_json(json_rows(_with_text_times(table))))
    if fmt == "csv":
        sink = io.BytesIO()
        pa_csv.write_csv(_labels_as_json(_with_text_times(table)), sink)
        body = sink.getvalue()
    elif fmt == "arrow":
        sink_arrow = pa.BufferOutputStream()
        utc = _utc(table)
        with pa.ipc.new_stream(sink_arrow, utc.schema) as writer:
            writer.write_table(utc)
        body = sink_arrow.getvalue().to_pybytes()
    else:
        sink = io.BytesIO()
        pq.write_table(_utc(table), sink)
        body = sink.getvalue()
    extension = {"csv": "csv", "arrow": "arrows", "parquet": "parquet"}[fmt]
    headers = {"Content-Disposition": f'inline; filename="{name}.{extension}"'}
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)
