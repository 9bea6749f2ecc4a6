"""Everything that talks to MLflow: the client boundary (`client`, with MLflow's private
names in `internals`), the flavor, registered versions and their aliases, loading, runs,
cards, retention and the fast REST path for loading. Light tier: needs only
`mlflow-skinny`, never Ray, torch or TensorFlow."""
