"""A run's life: the run service (the only code that changes a run's status), end-of-run listeners, events."""
