"""From checkpoint to registered version: export, log a LoggedModel at the training
iteration, register it, tag it and move the aliases (the `[tune]` extra)."""
