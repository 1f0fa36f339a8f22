"""The version of mlflow-kpigate: the one place it is written.

``setup.py`` reads it from this file (without importing the package, whose dependencies
are not installed while it builds), ``mlflow_kpigate.__version__`` re-exports it,
``kpigate --version`` prints it, and the release workflow checks a pushed ``vX.Y.Z`` tag
against it. Keep this file a single assignment of a string literal.
"""

__version__ = "0.1.0"
