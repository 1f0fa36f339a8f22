"""Slack and PagerDuty alerts against a real HTTP endpoint on 127.0.0.1."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.notify import MultiNotifier, notifier_from_policy
from mlflow_kpigate.notify.http import NotifyError
from mlflow_kpigate.notify.pagerduty import PagerDutyNotifier
from mlflow_kpigate.notify.slack import SlackNotifier
from mlflow_kpigate.policy import policy_from_dict
from mlflow_kpigate.rollout.memory import RecordingNotifier


class Endpoint:
    """Records JSON posts; answers with the queued status codes (then 202)."""

    def __init__(self):
        self.posts = []
        self.statuses = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, json.loads(body)))
                code = outer.statuses.pop(0) if outer.statuses else 202
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    ep = Endpoint()
    yield ep
    ep.close()


DETAILS = {"deployment": "fraud", "model": "fraud-detector", "candidate_version": "2",
           "baseline_version": "1", "phase": "rolled_back", "weights": "baseline 100%"}


def test_slack_message(endpoint):
    SlackNotifier(endpoint.url + "/hook").alert(severity="critical", summary="rolled back",
                                                 dedup_key="kpigate/fraud/2/rollback/1",
                                                 details=DETAILS)
    path, body = endpoint.posts[0]
    assert path == "/hook"
    assert "CRITICAL" in body["text"]
    assert "rolled back" in body["text"]
    assert "kpigate/fraud/2/rollback/1" in body["text"]


def test_pagerduty_event_and_retry_on_5xx(endpoint):
    endpoint.statuses = [500, 503]
    PagerDutyNotifier("R-KEY", endpoint.url + "/v2/enqueue").alert(
        severity="critical", summary="fraud v2 rolled back", dedup_key="kpigate/fraud/2/x/1",
        details=DETAILS)
    assert len(endpoint.posts) == 3  # two failures, then delivered
    body = endpoint.posts[-1][1]
    assert body["routing_key"] == "R-KEY"
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == "kpigate/fraud/2/x/1"
    assert body["payload"]["severity"] == "critical"
    assert body["payload"]["custom_details"]["deployment"] == "fraud"


def test_rejected_alert_raises_without_leaking_the_url(endpoint):
    endpoint.statuses = [400]
    with pytest.raises(NotifyError) as err:
        SlackNotifier(endpoint.url + "/secret-token").alert(
            severity="critical", summary="x", dedup_key="k", details={})
    assert "secret-token" not in str(err.value)
    assert "HTTP 400" in str(err.value)
    assert len(endpoint.posts) == 1  # a 4xx is not retried


def test_min_severity_and_channel_failures(endpoint):
    good = SlackNotifier(endpoint.url + "/ok")

    broken = RecordingNotifier()
    broken.fail = NotifyError("down")
    multi = MultiNotifier([broken, good], min_severity="warning")
    multi.alert(severity="info", summary="ignored", dedup_key="k", details={})
    assert endpoint.posts == []
    with pytest.raises(NotifyError):
        multi.alert(severity="critical", summary="sent anyway", dedup_key="k", details={})
    assert len(endpoint.posts) == 1  # the working channel still got it


def _policy(alerts):
    return policy_from_dict({
        "stages": "5,100",
        "kpis": [{"name": "e", "kind": "proportion", "metric": "error_rate", "margin": 0.01}],
        "alerts": alerts,
    })


def test_notifier_from_policy_reads_secrets_from_env(endpoint, monkeypatch):
    # A loopback test endpoint over http: allowed once the policy opts in to custom hosts.
    policy = _policy({"slack": {"webhook_url_env": "KPIGATE_TEST_SLACK"},
                      "pagerduty": {"routing_key_env": "KPIGATE_TEST_PD",
                                    "url": endpoint.url + "/pd"},
                      "allow_custom_hosts": True})
    with pytest.raises(UsageError, match="KPIGATE_TEST_SLACK is not set"):
        notifier_from_policy(policy)
    monkeypatch.setenv("KPIGATE_TEST_SLACK", endpoint.url + "/slack")
    monkeypatch.setenv("KPIGATE_TEST_PD", "key-1")
    notifier = notifier_from_policy(policy)
    notifier.alert(severity="warning", summary="holding past max", dedup_key="d",
                   details=DETAILS)
    assert sorted(p for p, _ in endpoint.posts) == ["/pd", "/slack"]
    assert notifier_from_policy(_policy(None)) is None


@pytest.mark.parametrize(("url", "custom", "problem"), [
    ("https://hooks.example.com/services/T0/B0/SECRET", False,
     "must be an https:// URL on hooks.slack.com (the alert's secret is sent there); for "
     "another host set alerts.allow_custom_hosts: true"),
    ("http://hooks.slack.com/services/T0/B0/SECRET", False,
     "must be an https:// URL on hooks.slack.com (the alert's secret is sent there); for "
     "another host set alerts.allow_custom_hosts: true"),
    ("http://169.254.169.254/latest/SECRET", True,
     "169.254.169.254 is a link-local address (a cloud metadata service); alerts are never "
     "sent there"),
    ("http://relay.example.com/SECRET", True,
     "http:// is allowed only for a loopback test endpoint (127.0.0.1, ::1, localhost); use "
     "https://"),
])
def test_slack_webhook_url_from_env_is_checked(monkeypatch, url, custom, problem):
    monkeypatch.setenv("KPIGATE_TEST_SLACK", url)
    policy = _policy({"slack": {"webhook_url_env": "KPIGATE_TEST_SLACK"},
                      "allow_custom_hosts": custom})
    with pytest.raises(UsageError) as info:
        notifier_from_policy(policy)
    assert str(info.value) == (f"alerts.slack.webhook_url_env: the URL in KPIGATE_TEST_SLACK: "
                               f"{problem}")
    assert "SECRET" not in str(info.value)  # the webhook URL is the secret


def test_official_hosts_need_no_opt_in(monkeypatch):
    monkeypatch.setenv("KPIGATE_TEST_SLACK", "https://hooks.slack.com/services/T0/B0/x")
    monkeypatch.setenv("KPIGATE_TEST_PD", "key-1")
    notifier = notifier_from_policy(_policy({
        "slack": {"webhook_url_env": "KPIGATE_TEST_SLACK"},
        "pagerduty": {"routing_key_env": "KPIGATE_TEST_PD",
                      "url": "https://events.eu.pagerduty.com/v2/enqueue"}}))
    assert notifier is not None
    assert [type(c).__name__ for c in notifier.channels] == ["SlackNotifier",
                                                            "PagerDutyNotifier"]
