"""Seldon Core request-logger CloudEvents: the envelope (attributes and payload bytes).

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
* ``Content-Type``: the payload's content type (the bodies are read by
  :mod:`mlflow_kpigate.metrics.cloudevent_payloads`).

Structured mode (``Content-Type: application/cloudevents+json``, attributes and
``data``/``data_base64`` in one JSON object) is accepted too. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EVENT_TYPES",
    "REQUEST",
    "RESPONSE",
    "STRUCTURED_CONTENT_TYPE",
    "CloudEvent",
    "EventError",
    "parse_cloudevent",
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
