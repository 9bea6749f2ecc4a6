"""Reading RLlib checkpoints: the only place that knows RLlib's layout, pickles, connectors
and modules, and turns them into a framework-neutral `PolicySnapshot` (the `[tune]` extra)."""
