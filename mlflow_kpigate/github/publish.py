"""Publishing a rollout's report through the GitHub API: the pull request's sticky
comment and the commit status ``kpigate/MODEL``.

Best effort: a missing token or repository, no pull request, a read-only token (pull
requests from forks) or an API that keeps failing give a ``::warning`` and nothing else;
the job summary already has the report.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_kpigate.github.api import GitHubClient, GitHubError, GitHubPermissionError
from mlflow_kpigate.github.comment import render, upsert_comment
from mlflow_kpigate.github.event import PullRequestRef, Resolution, head_sha, resolve
from mlflow_kpigate.github.outcome import status_description, status_state
from mlflow_kpigate.github.record import Links, RolloutRecord
from mlflow_kpigate.github.runner import SHA, Console, GitHubEnv

#: Makes the API client from (token, API URL).
ClientFactory = Callable[[str, str], GitHubClient]

_READ_ONLY_HINT = ("the token cannot write here; pull requests from forks get a read-only "
                   "token, otherwise grant the workflow 'pull-requests: write' (and "
                   "'statuses: write' for the commit status). The report is in the job "
                   "summary")


def publish(gh: GitHubEnv, record: RolloutRecord, links: Links, model: str, *,
            payload: Mapping[str, Any], explicit: int | None, comment: bool,
            commit_status: bool, console: Console, client_factory: ClientFactory) -> None:
    """The PR comment (``comment``) and the commit status (``commit_status``) of
    ``record``; every failure is a warning.

    The pull request is ``explicit`` (a number), else the one of the event ``payload``.
    """
    if not gh.token:
        console.warn("GITHUB_TOKEN is not set: no pull request comment or commit status "
                     "(pass github-token to the action); the report is in the job summary")
        return
    if not gh.repository:
        console.warn("GITHUB_REPOSITORY is not set: no pull request comment or commit status")
        return
    client = client_factory(gh.token, gh.api_url)
    try:
        found = resolve(gh.event_name, payload, explicit=explicit, sha=gh.sha, client=client,
                        repo=gh.repository)
    except GitHubError as exc:
        found = Resolution(None, f"the pull request lookup failed: {exc}")
    pr = found.pull_request
    if comment:
        if pr is None:
            console.warn(f"no pull request to comment on ({found.note}); the report is in "
                         "the job summary")
        else:
            body = render(record, links, model=model)
            try:
                result = upsert_comment(client, gh.repository, pr.number, model,
                                        console.clean(body))
                console.out(f"kpigate: {result.action} the comment on pull request "
                            f"#{pr.number}" + (f" ({result.url})" if result.url else ""))
            except GitHubPermissionError as exc:
                console.warn(f"pull request #{pr.number}: comment not posted ({exc}); "
                             f"{_READ_ONLY_HINT}")
            except GitHubError as exc:
                console.warn(f"pull request #{pr.number}: comment not posted ({exc}); the "
                             "report is in the job summary")
    if commit_status:
        _commit_status(client, gh, record, links, model, pr, console)


def _commit_status(client: GitHubClient, gh: GitHubEnv, record: RolloutRecord, links: Links,
                   model: str, pr: PullRequestRef | None, console: Console) -> None:
    """On the pull request's head commit (not the merge commit a pull_request run checks
    out), else on ``GITHUB_SHA``."""
    try:
        if pr is not None:
            sha = head_sha(client, gh.repository or "", pr)
        elif gh.sha:
            sha = gh.sha
        else:
            console.warn("no commit for the commit status: no pull request and no GITHUB_SHA")
            return
        if not SHA.match(sha):
            console.warn(f"commit status not set: {sha[:80]!r} is not a commit SHA")
            return
        target = links.workflow_run or links.mlflow_run
        body = {"state": status_state(record.state.phase),
                "description": status_description(record),
                "context": f"kpigate/{' '.join(model.split())}"}
        if target:
            body["target_url"] = target
        client.request("POST", f"/repos/{gh.repository}/statuses/"
                               f"{urllib.parse.quote(sha, safe='')}", body)
        console.out(f"kpigate: commit status {body['context']} = {body['state']} on "
                    f"{sha[:12]}")
    except GitHubPermissionError as exc:
        console.warn(f"commit status not set ({exc}); {_READ_ONLY_HINT}")
    except GitHubError as exc:
        console.warn(f"commit status not set ({exc})")
