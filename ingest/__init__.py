"""Collection and the single writer: sources, scrapes, scheduled ticks, pushed events."""
