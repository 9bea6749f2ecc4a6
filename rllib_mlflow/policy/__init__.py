"""Acting with an exported policy: numpy and one inference backend, nothing else.

The light install (`pip install rllib-mlflow`) stops here and at `rllib_mlflow.mlflow`.
`serving.py` is also MLflow's pyfunc loader, copied into every logged model, so it imports
nothing from the rest of this package.
"""
