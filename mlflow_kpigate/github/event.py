"""Which pull request a workflow run belongs to, from its event payload.

GitHub writes the triggering event's payload to the file named by ``GITHUB_EVENT_PATH``
and its name to ``GITHUB_EVENT_NAME``. The pull request is found, in order:

* the ``--pr-number`` option (the action's ``pr-number`` input), whatever the event;
* ``pull_request`` / ``pull_request_target`` (and the review events): the payload's
  ``pull_request.number``, head SHA ``pull_request.head.sha``;
* ``issue_comment``: ``issue.number`` when the issue is a pull request (it then has an
  ``issue.pull_request`` key); a comment on a plain issue has no pull request;
* ``push``: the pull requests of the pushed commit, ``GET /repos/{o}/{r}/commits/{sha}/pulls``
  (an open one first);
* ``workflow_dispatch``: the ``pr-number`` (or ``pr_number``) input;
* ``repository_dispatch``: ``client_payload.pr_number`` (what ``kpigate webhook-bridge``
  sends).

When the head SHA is not in the payload, :func:`head_sha` reads it from
``GET /repos/{o}/{r}/pulls/{n}``: a commit status belongs on the pull request's head
commit, not on the merge commit a ``pull_request`` run checks out (``GITHUB_SHA``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.github.api import GitHubClient, GitHubError

_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
#: Events whose payload carries the pull request itself.
PULL_REQUEST_EVENTS = ("pull_request", "pull_request_target", "pull_request_review",
                       "pull_request_review_comment")


@dataclass(frozen=True)
class PullRequestRef:
    """A pull request of the workflow's repository; ``source`` says how it was found."""

    number: int
    head_sha: str | None
    source: str


@dataclass(frozen=True)
class Resolution:
    """The pull request found, or None and ``note`` saying why there is none."""

    pull_request: PullRequestRef | None
    note: str = ""
    needs_lookup: bool = False  # a push: the PR is found through the API


def parse_pr_number(value: Any, where: str) -> int | None:
    """A pull request number from ``value`` (int or digits); None for empty.

    ``UsageError`` naming ``where`` for anything else.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise UsageError(f"{where}: {str(value)[:40]!r} is not a pull request number; "
                         "give a positive integer (or leave it empty)")
    return int(text)


def load_payload(path: str | None) -> dict[str, Any]:
    """The event payload at ``path`` (``GITHUB_EVENT_PATH``); ``{}`` when not set."""
    if not path:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"GITHUB_EVENT_PATH: cannot read {path} ({exc.strerror}); point it "
                         "at the event payload file, or unset it outside GitHub Actions"
                         ) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"GITHUB_EVENT_PATH: {path} is not JSON ({exc.msg} at line "
                         f"{exc.lineno}); point it at the event payload file") from None
    if not isinstance(payload, dict):
        raise UsageError(f"GITHUB_EVENT_PATH: {path} holds a JSON "
                         f"{type(payload).__name__}, not an event object")
    return payload


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sha(value: Any) -> str | None:
    """A commit SHA from a payload; anything else (it ends up in URL paths) is None."""
    return value if isinstance(value, str) and _SHA.fullmatch(value) else None


def from_payload(event_name: str | None, payload: Mapping[str, Any],
                 explicit: int | None = None) -> Resolution:
    """The pull request named by the option or the payload, without calling the API."""
    pr = _dict(payload.get("pull_request"))
    head = _sha(_dict(pr.get("head")).get("sha"))
    if explicit is not None:
        known = head if parse_pr_number(pr.get("number"), "pull_request.number") == explicit \
            else None
        return Resolution(PullRequestRef(explicit, known, "--pr-number"))
    name = event_name or ""
    if name in PULL_REQUEST_EVENTS or (not name and pr):
        number = parse_pr_number(pr.get("number"), "pull_request.number")
        if number is None:
            return Resolution(None, f"the {name or 'event'} payload has no pull_request.number")
        return Resolution(PullRequestRef(number, head, f"{name or 'event'} payload"))
    if name == "issue_comment":
        issue = _dict(payload.get("issue"))
        number = parse_pr_number(issue.get("number"), "issue.number")
        if number is None:
            return Resolution(None, "the issue_comment payload has no issue.number")
        if "pull_request" not in issue:
            return Resolution(None, f"the comment is on issue #{number}, which is not a pull "
                                    "request")
        return Resolution(PullRequestRef(number, None, "issue_comment payload"))
    if name == "push":
        return Resolution(None, "", needs_lookup=True)
    if name == "workflow_dispatch":
        inputs = _dict(payload.get("inputs"))
        raw = inputs.get("pr-number", inputs.get("pr_number"))
        number = parse_pr_number(raw, "inputs.pr-number")
        if number is None:
            return Resolution(None, "workflow_dispatch has no pull request; pass the "
                                    "pr-number input")
        return Resolution(PullRequestRef(number, None, "workflow_dispatch input"))
    if name == "repository_dispatch":
        client_payload = _dict(payload.get("client_payload"))
        number = parse_pr_number(client_payload.get("pr_number"), "client_payload.pr_number")
        if number is None:
            return Resolution(None, "the repository_dispatch client_payload has no pr_number")
        return Resolution(PullRequestRef(number, None, "repository_dispatch client_payload"))
    event = f"the {name} event" if name else "no GITHUB_EVENT_NAME"
    return Resolution(None, f"{event} names no pull request; pass pr-number")


def resolve(event_name: str | None, payload: Mapping[str, Any], *, explicit: int | None,
            sha: str | None, client: GitHubClient | None, repo: str | None) -> Resolution:
    """:func:`from_payload`, then for a ``push`` the pushed commit's pull request.

    API failures propagate as ``GitHubError``; the caller decides how loud they are.
    """
    found = from_payload(event_name, payload, explicit)
    if not found.needs_lookup:
        return found
    commit = sha or _sha(payload.get("after"))
    if not commit:
        return Resolution(None, "the push has no commit SHA (GITHUB_SHA is not set)")
    if client is None or not repo:
        return Resolution(None, "finding the pushed commit's pull request needs "
                                "GITHUB_TOKEN and GITHUB_REPOSITORY")
    pulls = client.request("GET", f"/repos/{repo}/commits/{commit}/pulls").data
    if not isinstance(pulls, list) or not pulls:
        return Resolution(None, f"commit {commit[:12]} belongs to no pull request")
    chosen = next((p for p in pulls if _dict(p).get("state") == "open"), pulls[0])
    number = parse_pr_number(_dict(chosen).get("number"), "commits/{sha}/pulls[].number")
    if number is None:
        return Resolution(None, f"commit {commit[:12]}: the pull request has no number")
    head = _sha(_dict(_dict(chosen).get("head")).get("sha")) or commit
    return Resolution(PullRequestRef(number, head, f"pull request of commit {commit[:12]}"))


def head_sha(client: GitHubClient, repo: str, pull_request: PullRequestRef) -> str:
    """The pull request's head commit, from the ref or ``GET /repos/{o}/{r}/pulls/{n}``."""
    if pull_request.head_sha:
        return pull_request.head_sha
    data = client.request("GET", f"/repos/{repo}/pulls/{pull_request.number}").data
    sha = _sha(_dict(_dict(data).get("head")).get("sha"))
    if sha is None:
        raise GitHubError(f"pull request #{pull_request.number} has no head SHA")
    return sha
