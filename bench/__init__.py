"""`make bench`: performance figures, each beside its baseline from the same run."""
