"""The report step: a rollout's outcome, where a pull request's reviewers look.

Run as a workflow step after the rollout ended (``kpigate github report``; the GitHub
Action does this). :meth:`ReportStep.prepare` checks the input (options, environment,
event payload) before anything is read or written; :meth:`ReportStep.report` then, from
the rollout's :class:`~mlflow_kpigate.github.record.RolloutRecord`:

1. writes the step outputs ``decision`` (the final phase: ``promoted``, ``rolled_back``,
   ``aborted``, or ``holding`` / ``canary`` / ``shadow`` / ``pending`` when the rollout has
   not ended), ``final-stage`` (``50%``, ``shadow`` …), ``rollout-run-id`` and
   ``report-path`` (the report directory: report.md, report.html, PNG charts) to
   ``$GITHUB_OUTPUT``;
2. appends the report to the job summary ``$GITHUB_STEP_SUMMARY``;
3. prints an ``::error`` annotation for a rollback or abort, ``::warning`` for a rollout
   still holding, ``::notice`` for a promotion;
4. creates or updates the pull request's sticky comment and sets the commit status
   ``kpigate/MODEL`` on the pull request's head commit (:mod:`.publish`);
5. returns the outcome's exit code (:mod:`~mlflow_kpigate.core.exit_codes`: 3 rolled
   back, 4 aborted, 5 not ended) when ``fail_on`` says the outcome fails the step, else 0.

The GitHub side is best effort: a missing token, no pull request, a read-only token (pull
requests from forks) or an API that keeps failing give a ``::warning`` and change neither
the summary nor the exit code. Bad input raises ``UsageError`` naming what to fix. The
token is sent to the API only and never printed.

Environment: ``GITHUB_TOKEN``, ``GITHUB_REPOSITORY``, ``GITHUB_API_URL``,
``GITHUB_SERVER_URL``, ``GITHUB_EVENT_NAME``, ``GITHUB_EVENT_PATH``, ``GITHUB_SHA``,
``GITHUB_RUN_ID``, ``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``, ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.exit_codes import exit_code_for
from mlflow_kpigate.github.api import GitHubClient
from mlflow_kpigate.github.comment import render
from mlflow_kpigate.github.event import from_payload, load_payload, parse_pr_number
from mlflow_kpigate.github.outcome import FAIL_ON, annotation, fails_step, outcome_of
from mlflow_kpigate.github.publish import ClientFactory, publish
from mlflow_kpigate.github.record import RolloutRecord, mlflow_links
from mlflow_kpigate.github.runner import Console, Echo, GitHubEnv
from mlflow_kpigate.github.workflow import SUMMARY_LIMIT_BYTES, append_summary, write_outputs


@dataclass(frozen=True)
class StepOptions:
    """What the step publishes and when it fails."""

    model: str | None = None  # the comment marker's and status context's model name
    comment: bool = True
    commit_status: bool = False
    fail_on: str = "rollback"
    pr_number: str | None = None  # for events without one; empty: from the event


@dataclass(frozen=True)
class ReportStep:
    """A report step whose input has been checked."""

    options: StepOptions
    env: GitHubEnv
    console: Console
    payload: Mapping[str, Any]
    pr_number: int | None

    @classmethod
    def prepare(cls, options: StepOptions, env: Mapping[str, str], echo: Echo) -> ReportStep:
        """Check the options, the environment and the event payload (``UsageError``).

        Before the rollout is read: reading it may write its report, and bad input must
        change nothing.
        """
        gh = GitHubEnv.from_env(env)
        console = Console(gh.token, echo)
        if options.fail_on not in FAIL_ON:
            raise UsageError(f"--fail-on: {options.fail_on!r} is not one of "
                             f"{', '.join(FAIL_ON)}")
        explicit = parse_pr_number(options.pr_number, "--pr-number")
        payload = load_payload(gh.event_path)
        # Checks the payload's numbers now, before anything is written.
        from_payload(gh.event_name, payload, explicit)
        return cls(options, gh, console, payload, explicit)

    def report(self, record: RolloutRecord, *,
               client_factory: ClientFactory = GitHubClient) -> int:
        """Outputs, job summary, annotation, comment and commit status of ``record``;
        returns the exit code (0, or the outcome's code when ``fail_on`` fails it).
        ``client_factory`` makes the API client from (token, API URL), e.g. one with other
        retry settings."""
        opts, gh, console = self.options, self.env, self.console
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
        console.out(annotation(record, model))

        if opts.comment or opts.commit_status:
            publish(gh, record, links, model, payload=self.payload, explicit=self.pr_number,
                    comment=opts.comment, commit_status=opts.commit_status, console=console,
                    client_factory=client_factory)

        _, words = outcome_of(state)
        console.out(f"kpigate: {model} {words} at {record.final_stage}: {state.reason}")
        return exit_code_for(state.phase) if fails_step(state.phase, opts.fail_on) else 0
