"""Talking to the GitHub Actions runner: step outputs, the job summary, workflow commands.

* Outputs go to the file named by ``GITHUB_OUTPUT`` in the multi-line form
  ``name<<DELIMITER`` … ``DELIMITER`` with a fresh random delimiter per value, so no
  value (a reason with newlines, say) can end its block early or inject another output.
* The job summary is markdown appended to ``GITHUB_STEP_SUMMARY``; the runner refuses one
  above 1 MiB, so callers keep under :data:`SUMMARY_LIMIT_BYTES`.
* Workflow commands (``::error title=…::message``) are lines on stdout; their message is
  escaped (``%``, CR, LF) and property values also escape ``:`` and ``,``, so text from a
  model or a reason cannot end the command or start another one.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from mlflow_kpigate.core.errors import UsageError

#: The runner's limit for one step's summary, less room for what other steps append.
SUMMARY_LIMIT_BYTES = 1024 * 1024 - 16 * 1024
_OUTPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF percent-encoded."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: as :func:`escape_data`, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(command: str, message: str, **properties: str) -> str:
    """One workflow command line, e.g. ``::warning title=kpigate%3A fraud::held at 25%25``."""
    if not re.fullmatch(r"[a-z-]+", command):
        raise ValueError(f"not a workflow command name: {command!r}")
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items()
                     if value)
    return f"::{command}{' ' + props if props else ''}::{escape_data(message)}"


def _delimiter(value: str) -> str:
    while True:
        candidate = f"ghadelimiter_{secrets.token_hex(16)}"
        if candidate not in value:
            return candidate


def format_outputs(outputs: Mapping[str, str]) -> str:
    """The ``GITHUB_OUTPUT`` text for ``outputs`` (every value in delimiter form)."""
    parts: list[str] = []
    for name, value in outputs.items():
        if not _OUTPUT_NAME.match(name):
            raise ValueError(f"output name {name!r}: use letters, digits, '-' and '_'")
        text = str(value)
        delimiter = _delimiter(text)
        parts.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
    return "".join(parts)


def write_outputs(path: str | Path, outputs: Mapping[str, str]) -> None:
    """Append ``outputs`` to the runner's output file ``path`` (``GITHUB_OUTPUT``)."""
    _append(path, format_outputs(outputs), "GITHUB_OUTPUT")


def append_summary(path: str | Path, markdown: str) -> None:
    """Append ``markdown`` (and a blank line) to the job summary ``path``."""
    _append(path, markdown.rstrip("\n") + "\n\n", "GITHUB_STEP_SUMMARY")


def _append(path: str | Path, text: str, variable: str) -> None:
    try:
        # newline="" keeps LF on Windows runners too: the delimiter lines must match exactly.
        with Path(path).open("a", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError(f"{variable}: cannot append to {path} ({exc.strerror}); it must "
                         "name a writable file (the runner sets it)") from None
