"""Historical answers: SQL over the store, REST history routes, the notebook API."""
