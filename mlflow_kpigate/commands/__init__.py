"""Implementations of the ``kpigate`` subcommands (registered on the group in ``cli``)."""
