"""``kpigate feedback NAME --file labels.csv|labels.jsonl``: late labels for a rollout.

Each row is checked here first — a request id, a 0/1 label, and a number for every
business value the rollout's policy needs (``values`` of the label; in a CSV, one column
per value). A bad row does not hold back the good ones: the good rows are sent, each bad
row is reported as ``FILE:LINE: what is wrong`` (one line each), and the command exits
with 2. Sending the file again once those rows are fixed is safe: the router keeps the
first label of a request id and counts the repeats as duplicates.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import click
import requests

from mlflow_kpigate.backends.seldon.collector_credentials import LABELS_TOKEN_ENV, labels_token
from mlflow_kpigate.backends.seldon.target import TARGET_PREFIX as SELDON_PREFIX
from mlflow_kpigate.core import extras
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.deploy.local import LocalDeployer

BATCH = 1000
#: Bad rows listed one per line; the rest are counted.
SHOWN_BAD_ROWS = 20
_BINARY = {"1": 1, "0": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0}


class BadRow(ValueError):
    """One row of the labels file that cannot be sent (the message says why)."""


def read_labels(path: Path, value_names: tuple[str, ...]
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """(labels to send, ``FILE:LINE: problem`` for each row that cannot be sent).

    ``UsageError`` for a file that cannot be used at all (unreadable, no CSV header).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a UTF-8 text file"
        raise UsageError(f"{path}: cannot read the labels file ({why})") from None
    rows: list[tuple[int, Any]] = []
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as exc:
                    rows.append((i, BadRow(f"not JSON ({exc.msg})")))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"request_id", "label"} <= set(reader.fieldnames):
            raise UsageError(f"{path}: the CSV needs a header with request_id and label "
                             "columns")
        rows = [(i, _csv_item(row)) for i, row in enumerate(reader, 2)]
    labels: list[dict[str, Any]] = []
    bad: list[str] = []
    for number, item in rows:
        try:
            if isinstance(item, BadRow):
                raise item
            labels.append(_checked(item, value_names))
        except BadRow as exc:
            bad.append(f"{path}:{number}: {exc}")
    return labels, bad


def _csv_item(row: dict[str, Any]) -> dict[str, Any] | BadRow:
    values: dict[str, float] = {}
    for key, cell in row.items():
        if key in ("request_id", "label") or key is None or cell in ("", None):
            continue
        try:
            values[key] = float(cell)
        except ValueError:
            return BadRow(f"column {key!r} must be a number, got {cell!r}")
    return {"request_id": row.get("request_id"), "label": row.get("label"), "values": values}


def _checked(item: Any, value_names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(item, dict) or not item.get("request_id"):
        raise BadRow("needs a request_id")
    label = str(item.get("label")).strip().lower()
    if label not in _BINARY:
        raise BadRow(f"label must be 0 or 1, got {item.get('label')!r}")
    out: dict[str, Any] = {"request_id": str(item["request_id"]), "label": _BINARY[label]}
    values = item.get("values") or {}
    if not isinstance(values, dict):
        raise BadRow("values must be an object of numbers")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise BadRow(f"values.{key} must be a finite number, got {value!r}")
    missing = [n for n in value_names if n not in values]
    if missing:
        raise BadRow(f"no value for {', '.join(map(repr, missing))}: the policy's business "
                     f"KPIs need {', '.join(map(repr, value_names))} with every label")
    if values:
        out["values"] = values
    return out


def send_labels(name: str, url: str, labels: list[dict[str, Any]], path: Path,
                token: str | None = None, what: str = "router"
                ) -> tuple[int, int, list[str]]:
    """POST ``labels`` in batches to ``url`` (a ``/feedback`` endpoint; ``token`` as
    ``Authorization: Bearer``); (matched, duplicates, unknown request ids)."""
    matched = duplicates = 0
    unknown: list[str] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for start in range(0, len(labels), BATCH):
        try:
            resp = requests.post(url, json={"labels": labels[start:start + BATCH]},
                                 headers=headers, timeout=60)
        except requests.RequestException as exc:
            raise KpigateError(f"{name}: the {what} at {url} is not reachable "
                               f"({exc}); {matched} labels were recorded") from None
        if resp.status_code >= 400:
            fix = (f"; give the collector's labels token (--token-file PATH or "
                   f"${LABELS_TOKEN_ENV})" if resp.status_code in (401, 403) else "")
            raise UsageError(f"{path}: the {what} rejected batch {start // BATCH + 1} "
                             f"(HTTP {resp.status_code}: {' '.join(resp.text[:200].split())})"
                             f"; {matched} labels before it were recorded{fix}")
        result = resp.json()
        matched += int(result.get("matched", 0))
        duplicates += int(result.get("duplicates", 0))
        unknown += list(result.get("unknown", []))
    return matched, duplicates, unknown


def _destination(name: str, target: str, config: dict[str, Any] | None,
                 token_file: str | None) -> tuple[Any, str, str | None, str]:
    """(deployer, feedback URL, token, what is behind it) for ``target``."""
    if target.startswith(SELDON_PREFIX):
        extras.require(extras.SELDON, f"-t {target}")
        from mlflow_kpigate.deploy.seldon import SeldonDeployer

        seldon = SeldonDeployer(target)
        return (seldon, seldon.feedback_url(name, config), labels_token(token_file),
                "collector")
    if target not in ("kpigate", "kpigate:/local"):
        raise UsageError(f"-t {target}: not a kpigate target; use kpigate (this machine) or "
                         "kpigate:/seldon/NAMESPACE")
    if token_file:
        raise UsageError("--token-file: only for a Seldon rollout (-t kpigate:/seldon/NS); "
                         "the embedded router's /feedback takes no token")
    local = LocalDeployer()
    return local, f"{local.describe(name, config)['endpoint']}/feedback", None, "router"


@click.command("feedback")
@click.argument("name")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False),
              help="labels.csv (request_id,label[,value columns]) or labels.jsonl")
@click.option("-t", "--target", default="kpigate", show_default=True,
              metavar="kpigate|kpigate:/seldon/NS",
              help="Where the rollout runs: this machine, or Seldon in namespace NS (labels "
                   "go to its collector, read from the rollout's saved settings).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help=f"Seldon: file holding the collector's labels token (default: the file "
                   f"${LABELS_TOKEN_ENV} names).")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="State directory (default $KPIGATE_STATE_DIR or ~/.kpigate).")
def feedback_command(name: str, path: str, target: str, token_file: str | None,
                     state_dir: str | None) -> None:
    """Send late-arriving labels for rollout NAME's predictions, matched by request id.

    Rows that cannot be sent are listed (FILE:LINE: why) and the command exits with 2;
    the others are sent. Sending the file again after fixing them is safe.
    """
    config = {"state_dir": state_dir} if state_dir else None
    deployer, url, token, what = _destination(name, target, config, token_file)
    policy = deployer.open(name, config).policy
    labels, bad = read_labels(Path(path), policy.value_names if policy else ())
    matched, duplicates, unknown = (send_labels(name, url, labels, Path(path), token, what)
                                    if labels else (0, 0, []))
    click.echo(f"{len(labels)} labels: {matched} matched, {len(unknown)} unknown request ids,"
               f" {duplicates} duplicates")
    if unknown:
        click.echo("unknown: " + ", ".join(unknown[:20]) + (" …" if len(unknown) > 20 else ""))
    if bad:
        for line in bad[:SHOWN_BAD_ROWS]:
            click.echo(line, err=True)
        if len(bad) > SHOWN_BAD_ROWS:
            click.echo(f"… and {len(bad) - SHOWN_BAD_ROWS} more", err=True)
        raise UsageError(f"{path}: {len(bad)} of {len(bad) + len(labels)} rows not sent "
                         "(listed above); fix them and send the file again (labels already "
                         "recorded count as duplicates)")
