"""Parsers of single ``-C`` values (booleans, sizes, URLs, Kubernetes names), each
raising a one-line ``UsageError`` that names the key and what would fix it."""

from __future__ import annotations

from typing import Any

from mlflow_kpigate.core.errors import UsageError

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}


def boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise UsageError(f"-C {key}={value}: must be true or false")


UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
          "mib": 2**20, "gib": 2**30}


def size(key: str, value: Any) -> int:
    import re

    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in UNITS or int(match.group(1)) < 1:
        raise UsageError(f"-C {key}={value}: must be a size such as 512KB, 16MiB or 1GB")
    size = int(match.group(1)) * UNITS[unit]
    if size < 1024:
        raise UsageError(f"-C {key}={value}: must be at least 1KiB")
    return size


def url(key: str, value: Any) -> str:
    from urllib.parse import urlparse

    text = str(value).strip().rstrip("/")
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(f"-C {key}={value}: must be an http:// or https:// URL")
    return text


def dns_label(key: str, value: Any) -> str:
    import re

    text = str(value).strip()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", text):
        raise UsageError(f"-C {key}={value}: must be a Kubernetes name (lower-case letters, "
                         "digits and '-', at most 63 characters)")
    return text


def ip_address(key: str, value: Any) -> str:
    """An IPv4 or IPv6 address to listen on (not a host name: no lookup at start)."""
    import ipaddress

    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"-C {key}={value}: must be an IP address to listen on, e.g. "
                         "127.0.0.1 or 0.0.0.0") from None
