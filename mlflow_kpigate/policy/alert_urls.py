"""Where alerts may be sent: https to the official Slack and PagerDuty hosts by default.

An alert carries a secret (Slack's webhook URL is one; PagerDuty's body holds the routing
key), so a URL pointing anywhere else — a typo, a copied example, a cloud metadata
address such as ``http://169.254.169.254/…`` — would hand the secret to whoever answers
there. By default only ``https://`` URLs on the channel's official hosts are accepted.
``alerts.allow_custom_hosts: true`` in the policy opts in to any other ``https://`` host
(a corporate proxy, a relay) and to ``http://`` on loopback only (a test endpoint on
127.0.0.1). Link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services)
are refused even then. Documented in ``docs/policy.md`` (``alerts``).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

SLACK_HOSTS = ("hooks.slack.com",)
PAGERDUTY_HOSTS = ("events.pagerduty.com", "events.eu.pagerduty.com")
_LOOPBACK_NAMES = ("localhost",)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def alert_url_problem(url: str, official: tuple[str, ...], allow_custom_hosts: bool) -> str | None:
    """What is wrong with sending alerts to ``url`` (None when nothing is).

    The answer never repeats the URL's path or query, which may hold the secret.
    """
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an https:// URL"
    address = _address(host)
    if address is not None and address.is_link_local:
        return (f"{host} is a link-local address (a cloud metadata service); alerts are never "
                "sent there")
    if host in official and parts.scheme == "https":
        return None
    loopback = host in _LOOPBACK_NAMES or (address is not None and address.is_loopback)
    if not allow_custom_hosts:
        where = " or ".join(official)
        return (f"must be an https:// URL on {where} (the alert's secret is sent there); for "
                "another host set alerts.allow_custom_hosts: true")
    if parts.scheme == "http" and not loopback:
        return ("http:// is allowed only for a loopback test endpoint (127.0.0.1, ::1, "
                "localhost); use https://")
    return None
