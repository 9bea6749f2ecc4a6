"""Everything that talks to MLflow: the flavor, the registry's versions, tags and aliases,
runs, cards, retention and the fast REST path for loading. Light tier: needs only
`mlflow-skinny`, never Ray, torch or TensorFlow."""
