"""Decoding and validation of the built-in kinds the fake API server stores besides
ConfigMaps: ``Secret`` (v1), ``Event`` (core v1) and ``Lease`` (``coordination.k8s.io/v1``).

Used by :mod:`fake_kube`; each function works on plain JSON dicts. ``normalize`` does what
the real server's decoding and defaulting do (``stringData`` merged into ``data``, Secret
``type`` defaulted to ``Opaque``, times re-encoded as the server encodes them) and raises
:class:`DecodeError` (answered 400, as a body the server cannot decode);
``problems`` / ``update_problems`` return ``(reason, field, message)`` causes for a 422
``Invalid``, like the API server's field.ErrorList.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone
from typing import Any

SECRET_MAX_BYTES = 1024 * 1024  # the API server's limit on a Secret's data
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/=]*")
EVENT_TYPES = ("Normal", "Warning")

Problem = tuple[str, str, str]


class DecodeError(Exception):
    """The body cannot be decoded into the kind (the real server answers 400 BadRequest)."""


def _cannot_decode(kind: str, version: str, why: str) -> DecodeError:
    return DecodeError(f'{kind} in version "{version}" cannot be handled as a {kind}: {why}')


def _parse_time(kind: str, value: Any) -> datetime:
    """An RFC 3339 time with an offset (``Z`` or ``±hh:mm``), as Go's time.Parse wants."""
    if not isinstance(value, str):
        raise _cannot_decode(kind, "v1", f"parsing time {value!r}: not a string")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in value.upper():
        raise _cannot_decode(kind, "v1", f'parsing time "{value}" as '
                                         '"2006-01-02T15:04:05Z07:00": cannot parse')
    return parsed.astimezone(timezone.utc)


def micro_time(kind: str, value: Any) -> str:
    """metav1.MicroTime as the server writes it back: UTC, 6 fractional digits, ``Z``."""
    return _parse_time(kind, value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds_time(kind: str, value: Any) -> str:
    """metav1.Time as the server writes it back: UTC, whole seconds, ``Z``."""
    return _parse_time(kind, value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_field(kind: str, value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _cannot_decode(kind, "v1", f"json: cannot unmarshal {type(value).__name__} into "
                                         f"Go struct field of type int32 ({name})")


def normalize(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Decode and default ``obj`` (a copy the caller owns) as the real server would."""
    if kind == "Secret":
        return _normalize_secret(obj)
    if kind == "Event":
        return _normalize_event(obj)
    if kind == "Lease":
        return _normalize_lease(obj)
    return obj


def _normalize_secret(obj: dict[str, Any]) -> dict[str, Any]:
    for section in ("data", "stringData"):
        value = obj.get(section)
        if value is not None and not isinstance(value, dict):
            raise _cannot_decode("Secret", "v1", f"json: cannot unmarshal into Go struct "
                                                 f"field Secret.{section}")
        for key, item in (value or {}).items():
            if not isinstance(item, str):
                raise _cannot_decode("Secret", "v1", f"json: cannot unmarshal "
                                                     f"{type(item).__name__} into Go struct "
                                                     f"field Secret.{section} of type string"
                                                     if section == "stringData" else
                                                     f"illegal base64 data in {key!r}")
            if section == "data":
                _check_base64(key, item)
    string_data = obj.pop("stringData", None) or {}
    if string_data:  # conversion from v1: stringData wins over data, then is dropped
        data = dict(obj.get("data") or {})
        for key, item in string_data.items():
            data[key] = base64.b64encode(item.encode()).decode()
        obj["data"] = data
    if obj.get("data") == {}:
        obj.pop("data")
    if not obj.get("type"):
        obj["type"] = "Opaque"
    return obj


def _check_base64(key: str, value: str) -> None:
    bad = next((i for i, c in enumerate(value) if not _BASE64_CHARS.fullmatch(c)), None)
    if bad is None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            bad = len(value)
    if bad is not None:
        raise _cannot_decode("Secret", "v1", f"illegal base64 data at input byte {bad}")


def _normalize_event(obj: dict[str, Any]) -> dict[str, Any]:
    for name in ("firstTimestamp", "lastTimestamp"):
        if obj.get(name) is not None:
            obj[name] = seconds_time("Event", obj[name])
    if obj.get("eventTime") is not None:
        obj["eventTime"] = micro_time("Event", obj["eventTime"])
    _int_field("Event", obj.get("count"), "Event.count")
    return obj


def _normalize_lease(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    if spec is None:
        return obj
    if not isinstance(spec, dict):
        raise _cannot_decode("Lease", "v1", "json: cannot unmarshal into Go struct field "
                                            "Lease.spec of type v1.LeaseSpec")
    for name in ("acquireTime", "renewTime"):
        if spec.get(name) is not None:
            spec[name] = micro_time("Lease", spec[name])
    for name in ("leaseDurationSeconds", "leaseTransitions"):
        _int_field("Lease", spec.get(name), f"LeaseSpec.{name}")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise _cannot_decode("Lease", "v1", "json: cannot unmarshal into Go struct field "
                                            "LeaseSpec.spec.holderIdentity of type string")
    return obj


# -- validation (422) --------------------------------------------------------------------------
def problems(kind: str, obj: dict[str, Any], namespace: str) -> list[Problem]:
    """Field errors of a create or an update (after :func:`normalize`)."""
    if kind == "Secret":
        return _secret_problems(obj)
    if kind == "Event":
        return _event_problems(obj, namespace)
    if kind == "Lease":
        return _lease_problems(obj)
    return []


def update_problems(kind: str, old: dict[str, Any], new: dict[str, Any]) -> list[Problem]:
    """Field errors that only an update can have (immutable fields)."""
    out: list[Problem] = []
    if kind == "Secret":
        if new.get("type") != old.get("type"):
            out.append(("FieldValueInvalid", "type",
                        f'Invalid value: "{new.get("type")}": field is immutable'))
        if old.get("immutable") is True:
            if new.get("immutable") is not True:
                out.append(("FieldValueForbidden", "immutable",
                            "Forbidden: field is immutable when `immutable` is set"))
            if (new.get("data") or {}) != (old.get("data") or {}):
                out.append(("FieldValueForbidden", "data",
                            "Forbidden: field is immutable when `immutable` is set"))
    if kind == "Event":
        old_ref, new_ref = old.get("involvedObject"), new.get("involvedObject")
        if isinstance(old_ref, dict) and isinstance(new_ref, dict) and \
                old_ref.get("namespace") != new_ref.get("namespace"):
            out.append(("FieldValueInvalid", "involvedObject.namespace",
                        "Invalid value: field is immutable"))
    return out


def _secret_problems(obj: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    total = 0
    for key, value in (obj.get("data") or {}).items():
        if not _CONFIG_KEY.fullmatch(key) or len(key) > 253:
            out.append(("FieldValueInvalid", f"data[{key}]",
                        f'Invalid value: "{key}": a valid config key must consist of '
                        "alphanumeric characters, '-', '_' or '.'"))
        total += len(base64.b64decode(value))
    if total > SECRET_MAX_BYTES:
        out.append(("FieldValueTooLong", "data",
                    f"Too long: must have at most {SECRET_MAX_BYTES} bytes"))
    if not isinstance(obj.get("type"), str):
        out.append(("FieldValueInvalid", "type", "Invalid value: must be a string"))
    return out


def _event_problems(obj: dict[str, Any], namespace: str) -> list[Problem]:
    out: list[Problem] = []
    ref = obj.get("involvedObject")
    if not isinstance(ref, dict) or not ref:
        out.append(("FieldValueRequired", "involvedObject", "Required value"))
        ref = {}
    if not obj.get("reason"):
        out.append(("FieldValueRequired", "reason", "Required value"))
    ref_ns = ref.get("namespace") or ""
    if obj.get("eventTime") is None:
        # legacy events: the event lives in its involved object's namespace ("default" for
        # cluster-scoped objects)
        if (ref_ns and ref_ns != namespace) or (not ref_ns and namespace not in ("",
                                                                                 "default")):
            out.append(("FieldValueInvalid", "involvedObject.namespace",
                        f'Invalid value: "{ref_ns}": does not match event.namespace'))
    else:
        if not ref_ns and namespace not in ("default", "kube-system"):
            out.append(("FieldValueInvalid", "involvedObject.namespace",
                        f'Invalid value: "{ref_ns}": does not match event.namespace'))
        for name in ("reportingComponent", "reportingInstance", "action"):
            if not obj.get(name):
                out.append(("FieldValueRequired", name, "Required value"))
    if obj.get("type") not in (None, "", *EVENT_TYPES):
        out.append(("FieldValueNotSupported", "type",
                    f'Unsupported value: "{obj.get("type")}": supported values: '
                    '"Normal", "Warning"'))
    for name in ("reason", "message", "action"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            out.append(("FieldValueInvalid", name, "Invalid value: must be a string"))
    if not _DNS_SUBDOMAIN.fullmatch(namespace or "default"):
        out.append(("FieldValueInvalid", "namespace", f'Invalid value: "{namespace}"'))
    return out


def _lease_problems(obj: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        out.append(("FieldValueInvalid", "spec.leaseDurationSeconds",
                    f"Invalid value: {duration}: must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        out.append(("FieldValueInvalid", "spec.leaseTransitions",
                    f"Invalid value: {transitions}: must be greater than or equal to 0"))
    return out
