"""Reading RLlib checkpoints: the only place that knows RLlib's layout, pickles, connectors
and modules, and turns them into a framework-neutral `PolicySnapshot` (the `[tune]` extra).

`reader` reads snapshots, from where `uris` finds the checkpoint, what `layout` finds in
its files, what `connectors` and `networks` make of its pipelines and torch modules;
`reference` is RLlib's own inference path that parity checks compare the exports against.
Old-API-stack checkpoints (TF2 and torch Policies) are read by `old_stack`, their models
translated by `old_models`, and compared with RLlib's own Policy by `old_reference`.
"""
