"""``kpigate github report``: a rollout's outcome, where a pull request's reviewers look.

Run as a workflow step after the rollout ended (the GitHub Action does this). From the
deployment's state, audit events and report it:

1. writes the step outputs ``decision`` (the final phase: ``promoted``, ``rolled_back``,
   ``aborted``, or ``holding`` / ``canary`` / ``shadow`` / ``pending`` when the rollout has
   not ended), ``final-stage`` (``50%``, ``shadow`` …), ``rollout-run-id`` and
   ``report-path`` (the report directory: report.md, report.html, PNG charts) to
   ``$GITHUB_OUTPUT``;
2. appends the report to the job summary ``$GITHUB_STEP_SUMMARY``;
3. prints an ``::error`` annotation for a rollback or abort, ``::warning`` for a rollout
   still holding, ``::notice`` for a promotion;
4. creates or updates the pull request's sticky comment (``--comment``, on by default)
   and sets the commit status ``kpigate/MODEL`` on the pull request's head commit
   (``--commit-status``);
5. exits 1 when ``--fail-on`` says the outcome fails the step, else 0.

The GitHub side is best effort: a missing token, no pull request, a read-only token (pull
requests from forks) or an API that keeps failing give a ``::warning`` and change neither
the summary nor the exit code. Bad input (options, environment, event payload) exits 2
with one line naming what to fix. The token is sent to the API only and never printed.

Environment: ``GITHUB_TOKEN``, ``GITHUB_REPOSITORY``, ``GITHUB_API_URL``,
``GITHUB_SERVER_URL``, ``GITHUB_EVENT_NAME``, ``GITHUB_EVENT_PATH``, ``GITHUB_SHA``,
``GITHUB_RUN_ID``, ``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``, ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import click

from mlflow_kpigate.cli.operate import STATE_DIR
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.state import Phase
from mlflow_kpigate.deploy.config import deployment_dir
from mlflow_kpigate.deploy.deployer import Rollout
from mlflow_kpigate.deploy.finish import write_report
from mlflow_kpigate.deploy.local import LocalDeployer
from mlflow_kpigate.deploy.targets import deployer_for
from mlflow_kpigate.github.api import (
    DEFAULT_API_URL,
    GitHubClient,
    GitHubError,
    GitHubPermissionError,
    check_api_url,
)
from mlflow_kpigate.github.comment import outcome, render, upsert_comment
from mlflow_kpigate.github.event import (
    PullRequestRef,
    Resolution,
    from_payload,
    head_sha,
    load_payload,
    parse_pr_number,
    resolve,
)
from mlflow_kpigate.github.record import (
    Evaluation,
    Links,
    RolloutRecord,
    http_base,
    mlflow_links,
)
from mlflow_kpigate.github.workflow import (
    SUMMARY_LIMIT_BYTES,
    append_summary,
    workflow_command,
    write_outputs,
)

FAIL_ON = ("rollback", "hold", "never")
#: Phases that fail the step with ``--fail-on rollback`` (and ``hold``).
ROLLBACK_PHASES = (Phase.ROLLED_BACK, Phase.ABORTED)
#: GitHub's limit for a commit status description.
STATUS_DESCRIPTION_CHARS = 140
_STATUS_STATE = {Phase.PROMOTED: "success", Phase.ROLLED_BACK: "failure",
                 Phase.ABORTED: "error"}
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
_READ_ONLY_HINT = ("the token cannot write here; pull requests from forks get a read-only "
                   "token, otherwise grant the workflow 'pull-requests: write' (and "
                   "'statuses: write' for the commit status). The report is in the job "
                   "summary")


@dataclass(frozen=True)
class GitHubEnv:
    """The runner's environment, validated."""

    token: str | None = None
    repository: str | None = None
    api_url: str = DEFAULT_API_URL
    server_url: str = "https://github.com"
    event_name: str | None = None
    event_path: str | None = None
    sha: str | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    output_path: str | None = None
    summary_path: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitHubEnv:
        """Read and check the variables; ``UsageError`` naming the one that is wrong."""
        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        repository = get("GITHUB_REPOSITORY")
        if repository and not _REPOSITORY.match(repository):
            raise UsageError(f"GITHUB_REPOSITORY: {repository[:80]!r} is not OWNER/NAME; the "
                             "runner sets it, or set it to e.g. octo-org/models")
        sha = get("GITHUB_SHA")
        if sha and not _SHA.match(sha):
            raise UsageError(f"GITHUB_SHA: {sha[:80]!r} is not a commit SHA; give the 40 "
                             "hex digits of a commit (the runner sets it)")
        run_id = get("GITHUB_RUN_ID")
        if run_id and not run_id.isdigit():
            raise UsageError(f"GITHUB_RUN_ID: {run_id[:40]!r} is not a number; the runner "
                             "sets it, or unset it")
        server = get("GITHUB_SERVER_URL") or "https://github.com"
        if http_base(server) is None:
            raise UsageError(f"GITHUB_SERVER_URL: {server[:80]!r} is not an http(s) URL; "
                             "set it to https://github.com or your GitHub Enterprise URL")
        return cls(token=get("GITHUB_TOKEN"), repository=repository,
                   api_url=check_api_url(get("GITHUB_API_URL") or DEFAULT_API_URL),
                   server_url=server.rstrip("/"), event_name=get("GITHUB_EVENT_NAME"),
                   event_path=get("GITHUB_EVENT_PATH"), sha=sha, run_id=run_id,
                   tracking_uri=get("MLFLOW_TRACKING_URI"), output_path=get("GITHUB_OUTPUT"),
                   summary_path=get("GITHUB_STEP_SUMMARY"))

    @property
    def workflow_run_url(self) -> str | None:
        """The workflow run's page (logs, job summary), when the runner said which."""
        if not (self.repository and self.run_id):
            return None
        return f"{self.server_url}/{self.repository}/actions/runs/{self.run_id}"


# --------------------------------------------------------------------------------------
# Reading the deployment
# --------------------------------------------------------------------------------------

def load_record(rollout: Rollout, *, build_missing_report: bool = True,
                warn: Callable[[str], None] | None = None) -> RolloutRecord:
    """The rollout's state, evaluations, traffic, final stage and report.

    When the report has not been written yet (a rollout that has not ended), it is
    written now into the rollout's directory, unless ``build_missing_report`` is False.
    """
    state = rollout.store.require()
    history = History.of(rollout.store.events())
    evaluations = tuple(Evaluation(e.ts, e.evaluation.decision, e.traffic_percent)
                        for e in history.evaluations())
    policy = rollout.policy
    if policy is not None and 0 <= state.stage_index < len(policy.stages):
        final_stage = policy.stages[state.stage_index].describe()
    elif state.phase is Phase.PROMOTED:
        final_stage = "100%"
    else:
        final_stage = evaluations[-1].decision.stage_name if evaluations else "—"
    report_dir = rollout.directory / "report"
    if not (report_dir / "report.md").is_file() and build_missing_report and policy:
        try:
            write_report(rollout.directory, state, rollout.store, policy)
        except Exception as exc:  # the outputs and the comment do not need the files
            if warn is not None:
                warn(f"could not write the rollout report in {report_dir} "
                     f"({type(exc).__name__}: {exc})")
    report_path = str(report_dir) if (report_dir / "report.md").is_file() else None
    return RolloutRecord(state, evaluations, tuple(history.traffic(changes_only=True)),
                         final_stage, policy, report_path)


# --------------------------------------------------------------------------------------
# Outcome rules
# --------------------------------------------------------------------------------------

def fails_step(phase: Phase, fail_on: str) -> bool:
    """Whether the outcome ``phase`` fails the step under ``--fail-on``.

    ``rollback``: a rollback or an abort fails; ``hold``: so does a rollout that has not
    ended (holding, or still in a stage when the wait stopped); ``never``: nothing does.
    """
    if fail_on == "never":
        return False
    if phase in ROLLBACK_PHASES:
        return True
    return fail_on == "hold" and not phase.terminal


def status_state(phase: Phase) -> str:
    """The commit status for ``phase``: success, failure, error, or pending (not ended)."""
    return _STATUS_STATE.get(phase, "pending")


def status_description(record: RolloutRecord) -> str:
    """One line of at most 140 characters: outcome, stage and reason."""
    _, words = outcome(record.state.phase)
    reason = " ".join((record.state.reason or "").split())
    line = f"{words} at {record.final_stage}" + (f": {reason}" if reason else "")
    if len(line) > STATUS_DESCRIPTION_CHARS:
        line = line[:STATUS_DESCRIPTION_CHARS - 1] + "…"
    return line


def _annotation(record: RolloutRecord, model: str) -> str:
    phase = record.state.phase
    _, words = outcome(phase)
    title = f"kpigate: {model} {words} at {record.final_stage}"
    reason = record.state.reason or "no reason recorded"
    if phase in ROLLBACK_PHASES:
        return workflow_command("error", reason, title=title)
    if phase is Phase.PROMOTED:
        return workflow_command("notice", reason, title=title)
    return workflow_command("warning", reason, title=title)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportOptions:
    """The options of ``kpigate github report``."""

    deployment: str
    state_dir: str | None = None
    model: str | None = None
    comment: bool = True
    commit_status: bool = False
    fail_on: str = "rollback"
    pr_number: str | None = None
    target: str = "kpigate"


def record_for(deployment: str, target: str, state_dir: str | None,
               warn: Callable[[str], None] | None = None,
               build_missing_report: bool = True) -> RolloutRecord:
    """The rollout ``deployment`` of ``target``: the state directory's (embedded backend)
    or the cluster's ConfigMaps (``kpigate:/seldon/NS``, through $KUBECONFIG or the
    in-cluster service account)."""
    if target.strip().rstrip("/") == "kpigate:":
        target = "kpigate"
    try:
        deployer = deployer_for(target)
    except UsageError:
        raise UsageError(f"--target {target}: use kpigate, kpigate:/local or "
                         "kpigate:/seldon/NAMESPACE") from None
    config = {"state_dir": state_dir} if state_dir else None
    if isinstance(deployer, LocalDeployer):
        directory = deployment_dir(deployment, state_dir)
        if not (directory / "state.db").is_file():
            raise UsageError(f"--deployment {deployment}: no deployment in {directory.parent}"
                             "; give the name used with `mlflow deployments create` and the "
                             "same --state-dir / KPIGATE_STATE_DIR")
    return load_record(deployer.open(deployment, config), warn=warn,
                       build_missing_report=build_missing_report)


class _Console:
    """Prints with the token redacted, whatever the text's origin.

    Each message becomes exactly one line: the runner reads every line that starts with
    ``::`` as a workflow command, so a reason with a newline in it must not start one.
    """

    def __init__(self, token: str | None) -> None:
        self.token = token

    def clean(self, text: str) -> str:
        if self.token and len(self.token) >= 4:
            return text.replace(self.token, "***")
        return text

    def _line(self, text: str) -> str:
        return " ".join(self.clean(text).splitlines())

    def out(self, text: str) -> None:
        click.echo(self._line(text))

    def err(self, text: str) -> None:
        click.echo(self._line(text), err=True)

    def warn(self, message: str) -> None:
        self.out(workflow_command("warning", self.clean(message), title="kpigate"))


ClientFactory = Callable[[str, str], GitHubClient]


def run_report(opts: ReportOptions, env: Mapping[str, str], *,
               client_factory: ClientFactory = GitHubClient) -> int:
    """Everything ``kpigate github report`` does; returns the exit code (0 or 1).

    ``UsageError`` for bad options, environment or event payload. ``client_factory``
    makes the API client from (token, API URL), e.g. one with other retry settings.
    """
    gh = GitHubEnv.from_env(env)
    console = _Console(gh.token)
    if opts.fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on: {opts.fail_on!r} is not one of {', '.join(FAIL_ON)}")
    explicit = parse_pr_number(opts.pr_number, "--pr-number")
    payload = load_payload(gh.event_path)
    # Checks the payload's numbers now, before anything is written.
    from_payload(gh.event_name, payload, explicit)
    record = record_for(opts.deployment, opts.target, opts.state_dir, warn=console.warn)
    state = record.state
    model = (opts.model or "").strip() or state.model_name
    links = mlflow_links(gh.tracking_uri or state.tracking_uri, state, gh.workflow_run_url)

    outputs = {"decision": state.phase.value, "final-stage": record.final_stage,
               "rollout-run-id": state.rollout_run_id or "",
               "report-path": record.report_path or ""}
    if gh.output_path:
        write_outputs(gh.output_path, outputs)
    else:
        console.err("GITHUB_OUTPUT is not set (not in GitHub Actions?): outputs not written")
    if gh.summary_path:
        summary = render(record, links, model=model, with_marker=False,
                         limit=SUMMARY_LIMIT_BYTES // 4)  # ≤ 4 UTF-8 bytes per character
        append_summary(gh.summary_path, console.clean(summary))
    else:
        console.err("GITHUB_STEP_SUMMARY is not set: the job summary is not written")
    console.out(_annotation(record, model))

    if opts.comment or opts.commit_status:
        _publish(opts, gh, record, links, model, payload, explicit, console, client_factory)

    _, words = outcome(state.phase)
    console.out(f"kpigate: {model} {words} at {record.final_stage}: {state.reason}")
    return 1 if fails_step(state.phase, opts.fail_on) else 0


def _publish(opts: ReportOptions, gh: GitHubEnv, record: RolloutRecord, links: Links,
             model: str, payload: Mapping[str, object], explicit: int | None,
             console: _Console, client_factory: ClientFactory) -> None:
    """The PR comment and the commit status; every failure is a warning."""
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
    if opts.comment:
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
    if opts.commit_status:
        _commit_status(client, gh, record, links, model, pr, console)


def _commit_status(client: GitHubClient, gh: GitHubEnv, record: RolloutRecord, links: Links,
                   model: str, pr: PullRequestRef | None, console: _Console) -> None:
    try:
        if pr is not None:
            sha = head_sha(client, gh.repository or "", pr)
        elif gh.sha:
            sha = gh.sha
        else:
            console.warn("no commit for the commit status: no pull request and no GITHUB_SHA")
            return
        if not _SHA.match(sha):
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


TARGET = click.option("--target", "-t", default="kpigate", show_default=True,
                      help="The deployment target: kpigate (this machine's state directory) "
                           "or kpigate:/seldon/NAMESPACE (the cluster's ConfigMaps).")


@click.group("github")
def github_group() -> None:
    """Report rollouts to GitHub: pull request comment, job summary, outputs, status."""


@github_group.command("report")
@click.option("--deployment", required=True, help="The deployment (rollout) name.")
@STATE_DIR
@click.option("--model", default=None,
              help="Model name for the comment marker and the status context "
                   "(default: the rollout's model).")
@click.option("--comment/--no-comment", default=True, show_default=True,
              help="Create or update the sticky pull request comment.")
@click.option("--commit-status/--no-commit-status", default=False, show_default=True,
              help="Set the commit status kpigate/MODEL on the pull request's head commit.")
@click.option("--fail-on", type=click.Choice(FAIL_ON, case_sensitive=False),
              default="rollback", show_default=True,
              help="Exit 1 on a rollback (or abort); on that or a rollout still holding; "
                   "or never.")
@click.option("--pr-number", default=None,
              help="Pull request number, for events without one (empty: from the event).")
@TARGET
def report_command(deployment: str, state_dir: str | None, model: str | None, comment: bool,
                   commit_status: bool, fail_on: str, pr_number: str | None,
                   target: str) -> None:
    """Outputs, job summary, annotations, PR comment and commit status of a rollout."""
    opts = ReportOptions(deployment, state_dir, model, comment, commit_status,
                         fail_on.lower(), pr_number, target)
    token = os.environ.get("GITHUB_TOKEN", "").strip() or None
    try:
        code = run_report(opts, os.environ)
    except KpigateError as exc:
        _Console(token).err(f"error: {' '.join(str(exc).split())}")
        raise click.exceptions.Exit(exc.exit_code) from None
    raise click.exceptions.Exit(code)



@github_group.command("run-id")
@click.option("--deployment", required=True, help="The deployment (rollout) name.")
@STATE_DIR
@TARGET
def run_id_command(deployment: str, state_dir: str | None, target: str) -> None:
    """Print the rollout run id of DEPLOYMENT's current rollout (empty if there is none).

    The action compares it before and after its rollout step, so that a rollout that
    failed to start is not reported with an earlier rollout's outcome.
    """
    try:
        record = record_for(deployment, target, state_dir, build_missing_report=False)
    except KpigateError:
        click.echo("")
        return
    click.echo(record.state.rollout_run_id or "")


if __name__ == "__main__":
    github_group(prog_name="kpigate github")
