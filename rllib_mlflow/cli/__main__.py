"""`python -m rllib_mlflow.cli`, as the console script."""

import sys

from rllib_mlflow.cli import main

sys.exit(main())
