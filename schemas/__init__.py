"""The contracts: DuckDB schema and migrations, edge models, and opening a database."""

from schemas.db import Database
from schemas.signals import Appended, AppendSignal

__all__ = ["Appended", "AppendSignal", "Database"]
