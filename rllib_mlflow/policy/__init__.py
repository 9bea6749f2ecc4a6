"""Acting with an exported policy: numpy and one inference backend, nothing else.

The light install (`pip install rllib-mlflow`) stops here and at `rllib_mlflow.mlflow`.
This package is copied into every logged model (`pyfunc.py` is MLflow's loader there), so
it imports nothing from the rest of rllib-mlflow, its modules import each other relatively,
and this file imports nothing at all.
"""
