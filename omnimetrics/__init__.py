"""The composition root: settings, the app factory and its lifespan, the CLI."""

from omnimetrics.memory import choose_arrow_pool

choose_arrow_pool()  # before anything imports pyarrow

from omnimetrics.app import create_app  # noqa: E402
from omnimetrics.settings import Settings  # noqa: E402

__all__ = ["Settings", "create_app"]
