"""Ray Tune's side: the callbacks, the worker process they hand work to, the journal and
`sync`. Importing this package imports nothing, so that the worker starts without Ray."""
