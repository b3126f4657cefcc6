"""Live streams: the tail of new rows, per-client bounded queues, WS and SSE routes."""
