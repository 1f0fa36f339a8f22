"""How much MLflow accepts per tag, parameter and batch, and :func:`truncate` to fit."""

from __future__ import annotations

#: Longest tag value written. MLflow 3 accepts 100,000 characters for model-version tags,
#: but servers created by MLflow 2 stored them in a VARCHAR(5000) column; 5000 is safe for
#: both. Longer values are cut and end with ``…``.
MAX_TAG_VALUE = 5000
#: Longest run parameter value MLflow accepts.
MAX_PARAM_VALUE = 6000
#: MLflow's ``log_batch`` limits.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


def truncate(value: str, limit: int = MAX_TAG_VALUE) -> str:
    """``value`` cut to at most ``limit`` characters, ending with ``…`` when cut."""
    value = str(value)
    if len(value) <= limit:
        return value
    return value[: limit - 1] + "…"
