"""The delta rule in Python, for the live stream. It must agree with the SQL macro
`sample_delta` in migrations.py, which defines the truth (a test checks both)."""


def sample_delta(kind: str, value: float, prev: float | None) -> float | None:
    """A counter's rise since `prev`, or its whole value where it dropped (a restart);
    a `delta` sample is its own increment; gauges and first samples have none."""
    if kind == "delta":
        return value
    if kind == "counter" and prev is not None:
        return value - prev if value >= prev else value
    return None
