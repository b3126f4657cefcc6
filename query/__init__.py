"""Historical answers: SQL over the store, REST history routes, the notebook API."""

from query.notebook import connect

__all__ = ["connect"]
