"""The composition root: settings, the app factory and its lifespan, the CLI."""

from omnimetrics.app import create_app
from omnimetrics.settings import Settings

__all__ = ["Settings", "create_app"]
