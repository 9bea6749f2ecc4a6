"""The version of rllib-mlflow, in a core module so that every tier may read it (the
package's `__init__` is the top tier)."""

__version__ = "0.1.0"
