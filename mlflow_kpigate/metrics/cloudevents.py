"""Seldon Core request-logger CloudEvents → kpigate predictions (pure: no I/O).

Seldon Core v1's executor logs every request and every response of a graph node that has
a ``logger`` (mode ``all``) as a separate CloudEvent, POSTed in *binary* mode: the payload
is the HTTP body and the attributes are headers. What it sends (``executor/logger`` and
``executor/predictor/predictor_process.go`` in SeldonIO/seldon-core):

* ``Ce-Id``: a fresh UUID per event (so the request and the response have different
  ids; a retried delivery repeats it). ``Ce-Specversion: 1.0``, ``Ce-Source``: the
  executor's URL, ``Ce-Time``: set by the sending worker when it sends.
* ``Ce-Type``: ``io.seldon.serving.inference.request`` or
  ``io.seldon.serving.inference.response`` (``io.seldon.serving.feedback`` for feedback
  calls, not used here).
* Extension attributes: ``Ce-Requestid`` (the Seldon ``puid``, shared by the request and
  its response), ``Ce-Modelid`` (the *graph node* name, not a model version),
  ``Ce-Inferenceservicename`` (the SeldonDeployment), ``Ce-Namespace``, ``Ce-Endpoint``
  (the predictor name, which in kpigate's deployments is the role: ``baseline`` or
  ``candidate``) and ``Ce-Protocol`` (``seldon``, ``tensorflow`` or ``v2``/``kfserving``).
* ``Content-Type``: the payload's content type; bodies are the node's JSON input/output
  in Seldon's protocol (``{"data": {"names": [...], "ndarray": [[...]]}}`` or
  ``"tensor": {"shape", "values"}``), the v2 inference protocol (``inputs`` / ``outputs``
  of ``{name, shape, datatype, data}``) or the TensorFlow/MLflow one (``instances`` /
  ``predictions``, MLflow's ``dataframe_split`` …).

The response is logged only when the node succeeded, so a request whose response never
comes is the sign of a failed prediction. Structured mode (``Content-Type:
application/cloudevents+json``, attributes and ``data``/``data_base64`` in one JSON
object) is accepted too.

What the events do not carry is the model's latency: ``Ce-Time`` is stamped when a
logger worker sends the event from its queue, so the difference between a response's and
its request's ``Ce-Time`` mixes queueing delay into the model time. Predictions built here
therefore have ``latency_s=None`` (unknown); in cluster mode latency KPIs come from
Seldon's executor histogram (``seldon_api_executor_server_requests_seconds``).

Everything the gate needs from a request (row count, the policy's segment fields and
business values found among its named columns) and from a response (score and 0/1
prediction per row, read with the embedded router's
:func:`~mlflow_kpigate.core.payloads.interpret_output`) is extracted into small
JSON-serialisable halves, so a half waiting for its partner is stored without the
request's features.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlflow_kpigate.core.payloads import PayloadError, interpret_output, parse_payload
from mlflow_kpigate.core.records import ROLES, Prediction

__all__ = [
    "EVENT_TYPES",
    "REQUEST",
    "RESPONSE",
    "STRUCTURED_CONTENT_TYPE",
    "CloudEvent",
    "EventError",
    "RequestHalf",
    "ResponseHalf",
    "join_predictions",
    "parse_cloudevent",
    "read_request",
    "read_response",
    "row_ids",
]

REQUEST = "request"
RESPONSE = "response"
#: CloudEvent type → which half of a prediction it is.
EVENT_TYPES: Mapping[str, str] = {
    "io.seldon.serving.inference.request": REQUEST,
    "io.seldon.serving.inference.response": RESPONSE,
}
_FEEDBACK_TYPE = "io.seldon.serving.feedback"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_SPEC_VERSIONS = ("1.0", "0.3")
_MAX_ATTRIBUTE = 256
UNKNOWN_SEGMENT = "unknown"


class EventError(ValueError):
    """An event the collector cannot use; the message is the one-line reason (HTTP 400).

    ``kind`` is ``"request"``/``"response"`` when the event's type was understood, else
    ``"unknown"`` (for the ``type`` label of ``kpigate_cloudevents_total``).
    """

    def __init__(self, message: str, kind: str = "unknown") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CloudEvent:
    """The attributes kpigate uses from one logger event, and its payload bytes."""

    id: str
    type: str
    request_id: str
    source: str | None = None
    endpoint: str | None = None
    model_id: str | None = None
    deployment: str | None = None
    namespace: str | None = None
    protocol: str | None = None
    time: str | None = None
    content_type: str | None = None
    data: bytes = b""

    @property
    def kind(self) -> str:
        """``"request"`` or ``"response"``."""
        return EVENT_TYPES[self.type]


# -- envelope -------------------------------------------------------------------------------


def _attribute(value: Any, name: str, kind: str, *, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise EventError(f"{name}: missing; the Seldon request logger always sets it", kind)
        return None
    if not isinstance(value, str):
        raise EventError(f"{name}: must be a string, got {type(value).__name__}", kind)
    if len(value) > _MAX_ATTRIBUTE or any(ord(c) < 32 for c in value):
        raise EventError(f"{name}: must be at most {_MAX_ATTRIBUTE} printable characters",
                         kind)
    return value


def _event_kind(event_type: Any) -> str:
    if event_type is None or event_type == "":
        raise EventError("type: missing (Ce-Type header); expected "
                         f"{' or '.join(EVENT_TYPES)}")
    if event_type == _FEEDBACK_TYPE:
        raise EventError(f"type: {_FEEDBACK_TYPE} is not used by kpigate; post labels to "
                         "/feedback instead, and set the logger mode so feedback is not sent")
    if event_type not in EVENT_TYPES:
        shown = str(event_type)[:80]
        raise EventError(f"type: unknown event type {shown!r}; expected "
                         f"{' or '.join(EVENT_TYPES)}")
    return EVENT_TYPES[event_type]


def _build(attrs: Mapping[str, Any], data: bytes, content_type: str | None,
           where: str) -> CloudEvent:
    kind = _event_kind(attrs.get("type"))
    version = attrs.get("specversion")
    if version not in _SPEC_VERSIONS:
        raise EventError(f"{where}specversion: must be one of {', '.join(_SPEC_VERSIONS)}, "
                         f"got {version!r}", kind)
    values = {
        name: _attribute(attrs.get(name), f"{where}{name}", kind,
                         required=name in ("id", "requestid"))
        for name in ("id", "requestid", "source", "endpoint", "modelid",
                     "inferenceservicename", "namespace", "protocol", "time")
    }
    return CloudEvent(
        id=values["id"] or "", type=str(attrs["type"]), request_id=values["requestid"] or "",
        source=values["source"], endpoint=values["endpoint"], model_id=values["modelid"],
        deployment=values["inferenceservicename"], namespace=values["namespace"],
        protocol=values["protocol"], time=values["time"], content_type=content_type,
        data=data,
    )


def parse_cloudevent(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The event in an HTTP POST, binary or structured mode (``EventError`` if unusable).

    ``headers`` may use any letter case. Binary mode reads the ``Ce-*`` headers and takes
    the body as the payload; structured mode (``Content-Type:
    application/cloudevents+json``) reads one JSON object with the attributes and
    ``data`` (JSON) or ``data_base64``.
    """
    lower = {str(k).lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type")
    mime = (content_type or "").partition(";")[0].strip().lower()
    if mime == STRUCTURED_CONTENT_TYPE:
        return _structured(body)
    attrs = {k[3:]: v for k, v in lower.items() if k.startswith("ce-")}
    if not attrs:
        raise EventError("not a CloudEvent: no Ce-* headers and Content-Type is not "
                         f"{STRUCTURED_CONTENT_TYPE}; point the Seldon logger url here")
    return _build(attrs, body, content_type, "")


def _structured(body: bytes) -> CloudEvent:
    try:
        envelope = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventError(f"structured CloudEvent is not valid JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise EventError("structured CloudEvent must be a JSON object")
    kind = _event_kind(envelope.get("type"))
    content_type = envelope.get("datacontenttype")
    if content_type is not None and not isinstance(content_type, str):
        raise EventError("datacontenttype: must be a string", kind)
    if "data_base64" in envelope:
        encoded = envelope["data_base64"]
        if not isinstance(encoded, str):
            raise EventError("data_base64: must be a base64 string", kind)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("data_base64: not valid base64", kind) from None
    elif "data" in envelope:
        payload = envelope["data"]
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    else:
        raise EventError("data: missing; a structured event needs data or data_base64", kind)
    return _build(envelope, data, content_type, "")


# -- payloads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestHalf:
    """What a request event tells: per row, the segment values and business values."""

    n_rows: int
    segments: tuple[Mapping[str, str], ...]
    values: tuple[Mapping[str, float], ...]

    def to_json(self) -> str:
        """Compact JSON for the pending-halves table."""
        return json.dumps({"n": self.n_rows, "segments": [dict(s) for s in self.segments],
                           "values": [dict(v) for v in self.values]})

    @classmethod
    def from_json(cls, text: str) -> RequestHalf:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(int(d["n"]), tuple(d["segments"]), tuple(d["values"]))


@dataclass(frozen=True)
class ResponseHalf:
    """What a response event tells: per row, the score and 0/1 prediction.

    ``error`` is set when the payload reports a failure (Seldon's ``status: FAILURE``);
    ``understood`` is False when the output is not a binary classifier's (no scores).
    """

    n_rows: int
    scores: tuple[float | None, ...]
    predicted: tuple[int | None, ...]
    understood: bool
    error: str | None = None

    def to_json(self) -> str:
        """Compact JSON for the pending-halves table."""
        return json.dumps({"n": self.n_rows, "scores": list(self.scores),
                           "predicted": list(self.predicted), "understood": self.understood,
                           "error": self.error})

    @classmethod
    def from_json(cls, text: str) -> ResponseHalf:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(int(d["n"]), tuple(d["scores"]), tuple(d["predicted"]),
                   bool(d["understood"]), d["error"])


def _json_body(event: CloudEvent) -> dict[str, Any]:
    mime = (event.content_type or "application/json").partition(";")[0].strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise EventError(f"content type {mime!r} is not read (gRPC/protobuf payloads are "
                         "not supported): log REST JSON traffic", event.kind)
    try:
        body = json.loads(event.data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventError(f"{event.kind} payload is not valid JSON: {exc}", event.kind) from None
    if not isinstance(body, dict):
        raise EventError(f"{event.kind} payload must be a JSON object, got "
                         f"{type(body).__name__}", event.kind)
    return body


def _tensor(tensor: Any, where: str, kind: str) -> np.ndarray:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("values"), list):
        raise EventError(f"{where}: needs 'values' (a list) and 'shape'", kind)
    shape = tensor.get("shape")
    values = np.asarray(tensor["values"])
    if shape is None:
        return values
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise EventError(f"{where}.shape: must be a list of non-negative integers", kind)
    if math.prod(shape) != values.size:
        raise EventError(f"{where}: shape {shape} does not hold {values.size} values", kind)
    return values.reshape(shape)


def _seldon_table(data: Any, kind: str) -> pd.DataFrame:
    if not isinstance(data, dict):
        raise EventError("data: must be an object with ndarray or tensor", kind)
    names = data.get("names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(n, str) for n in names)):
        raise EventError("data.names: must be a list of strings", kind)
    if "ndarray" in data:
        rows = data["ndarray"]
        if not isinstance(rows, list) or not rows:
            raise EventError("data.ndarray: must be a non-empty list", kind)
        if not all(isinstance(r, list) for r in rows):
            rows = [rows]  # one sample given as a flat list of its features
    elif "tensor" in data:
        array = _tensor(data["tensor"], "data.tensor", kind)
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2:
            raise EventError(f"data.tensor: a request of {array.ndim} dimensions has no rows "
                             "and columns", kind)
        rows = array.tolist()
    else:
        raise EventError("data: needs 'ndarray' or 'tensor' (tftensor is not read)", kind)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise EventError(f"data.ndarray: rows have different lengths {sorted(widths)}", kind)
    width = widths.pop()
    if names is not None and len(names) != width:
        raise EventError(f"data.names: {len(names)} names for rows of {width} values", kind)
    return pd.DataFrame(rows, columns=names if names else None)


def _v2_inputs(inputs: list[Any], kind: str) -> pd.DataFrame:
    columns: dict[str, list[Any]] = {}
    arrays = []
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise EventError(f"{where}: needs 'name', 'shape', 'datatype' and 'data'", kind)
        array = _tensor({"values": _flat(item.get("data"), where, kind),
                         "shape": item.get("shape")}, where, kind)
        arrays.append((item["name"], array))
    if len(arrays) == 1 and arrays[0][1].ndim == 2 and arrays[0][1].shape[1] != 1:
        return pd.DataFrame(arrays[0][1].tolist())  # one tensor of unnamed feature columns
    lengths = set()
    for name, array in arrays:
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise EventError(f"input {name!r}: shape {list(array.shape)} is not one column; "
                             "send named 1-D inputs (the pandas codec) or one [rows, "
                             "columns] tensor", kind)
        columns[name] = array.tolist()
        lengths.add(array.shape[0])
    if len(lengths) != 1:
        raise EventError(f"inputs: columns have different lengths {sorted(lengths)}", kind)
    return pd.DataFrame(columns)


def _flat(data: Any, where: str, kind: str) -> list[Any]:
    if not isinstance(data, list):
        raise EventError(f"{where}.data: must be a list", kind)
    # v2 allows nested lists in row-major order; flatten them.
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _is_v2(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(
        isinstance(x, dict) and "name" in x and "data" in x and ("datatype" in x or "shape" in x)
        for x in value))


def _mlflow_table(body: Mapping[str, Any], kind: str) -> pd.DataFrame:
    try:
        return parse_payload(json.dumps(body).encode(), "application/json").frame
    except PayloadError as exc:
        raise EventError(f"request payload: {exc}", kind) from None


def read_table(event: CloudEvent) -> pd.DataFrame:
    """The input rows of a request event as a DataFrame (named columns where the payload
    names them); ``EventError`` if the payload has no readable rows."""
    body = _json_body(event)
    kind = event.kind
    if "data" in body:
        frame = _seldon_table(body["data"], kind)
    elif "jsonData" in body:
        payload = body["jsonData"]
        if isinstance(payload, list) and payload and all(isinstance(r, dict) for r in payload):
            frame = pd.DataFrame(payload)
        elif isinstance(payload, dict):
            frame = _mlflow_table(payload, kind)
        else:
            raise EventError("jsonData: must be a list of records or an MLflow payload such "
                             "as {\"dataframe_split\": ...}", kind)
    elif "strData" in body or "binData" in body:
        frame = pd.DataFrame(index=range(1))  # one opaque sample: no columns to read
    elif _is_v2(body.get("inputs")):
        frame = _v2_inputs(body["inputs"], kind)
    else:
        frame = _mlflow_table({k: v for k, v in body.items() if k != "meta"}, kind)
    if len(frame) == 0:
        raise EventError("request payload has no rows", kind)
    return frame


def _segment(value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN_SEGMENT
    return str(value)


def _value(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def read_request(event: CloudEvent, segment_fields: Sequence[str],
                 value_names: Sequence[str]) -> RequestHalf:
    """Row count, segment values and business values of a request event.

    As in the embedded router, a segment field missing from the columns, or empty, is
    ``"unknown"``; business values are taken from columns of that name when they hold
    finite numbers (labels may still bring them, and win).
    """
    frame = read_table(event)
    n = len(frame)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    segments: list[dict[str, str]] = [{} for _ in range(n)]
    for name in segment_fields:
        cells = frame[name].tolist() if name in columns else [None] * n
        for row, cell in zip(segments, cells, strict=True):
            row[name] = _segment(cell)
    values: list[dict[str, float]] = [{} for _ in range(n)]
    for name in value_names:
        if name not in columns:
            continue
        for row, cell in zip(values, frame[name].tolist(), strict=True):
            number = _value(cell)
            if number is not None:
                row[name] = number
    return RequestHalf(n, tuple(segments), tuple(values))


def _choose_output(outputs: list[Any], kind: str) -> np.ndarray:
    chosen = outputs[0]
    if len(outputs) > 1:
        # A classifier exposing labels and probabilities: the probabilities carry the score.
        chosen = next((o for o in outputs if "prob" in str(o.get("name", "")).lower()),
                      outputs[0])
    return _tensor({"values": _flat(chosen.get("data"), "outputs[].data", kind),
                    "shape": chosen.get("shape")}, f"output {chosen.get('name')!r}", kind)


def _failure(body: Mapping[str, Any]) -> str | None:
    status = body.get("status")
    if isinstance(status, dict) and str(status.get("status", "")).upper() == "FAILURE":
        info = status.get("info") or status.get("reason") or "model reported FAILURE"
        return str(info).splitlines()[0][:300] if str(info).strip() else "FAILURE"
    return None


def _raw_output(body: Mapping[str, Any], kind: str) -> Any:
    if "data" in body:
        data = body["data"]
        if not isinstance(data, dict):
            raise EventError("data: must be an object with ndarray or tensor", kind)
        if "ndarray" in data:
            return data["ndarray"]
        if "tensor" in data:
            return _tensor(data["tensor"], "data.tensor", kind)
        raise EventError("data: needs 'ndarray' or 'tensor' (tftensor is not read)", kind)
    if _is_v2(body.get("outputs")):
        return _choose_output(body["outputs"], kind)
    if "predictions" in body:
        raw = body["predictions"]
        if isinstance(raw, list) and raw and all(isinstance(r, dict) for r in raw):
            return pd.DataFrame(raw)
        if isinstance(raw, dict):
            return pd.DataFrame(raw)
        return raw
    if "jsonData" in body:
        payload = body["jsonData"]
        if isinstance(payload, dict) and "predictions" in payload:
            return _raw_output(payload, kind)
        return payload
    if "strData" in body or "binData" in body:
        return None
    raise EventError("response payload: needs 'data' (Seldon), 'outputs' (v2) or "
                     "'predictions'", kind)


def _rows_of(raw: Any) -> int:
    if raw is None:
        return 1
    if isinstance(raw, pd.DataFrame):
        return len(raw)
    try:
        array = np.asarray(raw, dtype=object)
    except Exception:  # ragged or exotic outputs: one opaque answer
        return 1
    return int(array.shape[0]) if array.ndim >= 1 else 1


def read_response(event: CloudEvent, threshold: float) -> ResponseHalf:
    """Scores and 0/1 predictions of a response event, per row.

    A reported failure gives an errored half; output that is not a binary classifier's
    (multi-class, strings, a mapping) gives ``understood=False`` and no scores, as in the
    embedded router.
    """
    body = _json_body(event)
    kind = event.kind
    failure = _failure(body)
    if failure is not None:
        return ResponseHalf(0, (), (), False, failure)
    raw = _raw_output(body, kind)
    n = _rows_of(raw)
    out = interpret_output(raw, n, threshold)
    return ResponseHalf(n, tuple(out.scores), tuple(out.predicted), out.understood)


# -- joining --------------------------------------------------------------------------------


def row_ids(request_id: str, n_rows: int) -> list[str]:
    """Per-row prediction ids, as the embedded router makes them: the request id for one
    row, ``REQID/i`` for row ``i`` of a larger request."""
    return [request_id] if n_rows == 1 else [f"{request_id}/{i}" for i in range(n_rows)]


def join_predictions(
    *,
    request_id: str,
    role: str,
    version: str,
    stage_index: int,
    shadow: bool,
    ts: float,
    request: RequestHalf | None,
    response: ResponseHalf | None,
) -> list[Prediction]:
    """The predictions of one request/response pair (either may be missing).

    * both halves: one row per request row, scored from the response (if the response has
      another row count, or failed, no scores; a failure makes the rows errors);
    * request only (its response never came, which Seldon's logger does when the model
      failed): error rows without scores;
    * response only (its request was lost): rows with unknown segments.

    Latency is unknown (``None``): see the module docstring.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if request is None and response is None:
        return []
    n = request.n_rows if request is not None else response.n_rows  # type: ignore[union-attr]
    if response is not None and response.error is not None:
        n = request.n_rows if request is not None else 1
    segments: Iterable[Mapping[str, str]] = (
        request.segments if request is not None else [{}] * n)
    failed = response is None or response.error is not None
    usable = response is not None and not failed and response.n_rows == n
    out = []
    for i, (rid, segs) in enumerate(zip(row_ids(request_id, n), segments, strict=True)):
        score = response.scores[i] if usable else None  # type: ignore[union-attr]
        predicted = response.predicted[i] if usable else None  # type: ignore[union-attr]
        out.append(Prediction(
            request_id=rid, ts=ts, role=role, version=version, stage_index=stage_index,
            shadow=shadow, latency_s=None, error=failed, score=score, predicted=predicted,
            segments=dict(segs),
        ))
    return out
