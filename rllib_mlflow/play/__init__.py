"""Playing registered versions in their environment without Ray: evaluation and replays
(the `[evaluate]` extra: gymnasium, matplotlib; `[video]` for rendering)."""
