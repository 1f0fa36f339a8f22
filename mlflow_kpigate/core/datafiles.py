"""Reading the small YAML/JSON input files (baselines, scenarios) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mlflow_kpigate.core.errors import UsageError


def read_yaml_or_json(path: str | Path, what: str) -> Any:
    """Parse ``path`` (JSON if it ends in ``.json``, else YAML); ``UsageError`` on failure.

    ``what`` names the file in messages, e.g. ``"baseline file"``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the {what} is not UTF-8 text") from None
    as_json = path.suffix == ".json"
    try:
        return json.loads(text) if as_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: not valid {'JSON' if as_json else 'YAML'} "
                         f"({str(exc).splitlines()[0]})") from None
