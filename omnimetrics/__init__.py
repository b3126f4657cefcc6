"""The composition root: settings, the app factory and its lifespan, the CLI."""

# Settings first: it gives Arrow its memory pool before anything imports pyarrow.
from omnimetrics.settings import Settings  # isort: skip

from omnimetrics.app import create_app

__all__ = ["Settings", "create_app"]
