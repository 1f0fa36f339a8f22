"""Reporting rollouts to GitHub: the REST client, the pull request of a workflow run, the
sticky comment, and the Actions runner's outputs, job summary and workflow commands.

Public API::

    from mlflow_kpigate.github import GitHubClient, render, upsert_comment, resolve

Modules, each owning one thing:

* :mod:`.api`: the REST client (retries, pagination, permission errors);
* :mod:`.event`: which pull request a workflow run belongs to;
* :mod:`.record`: the values a report is made of (:class:`RolloutRecord`, links);
* :mod:`.comment`: the markdown report and the sticky comment; :mod:`.charts` its
  Mermaid charts;
* :mod:`.outcome`: what an outcome means on GitHub (status, annotation, exit code);
* :mod:`.workflow`: the runner's outputs, job summary and workflow commands;
  :mod:`.runner`: its environment and its token-masking log;
* :mod:`.publish`: the comment and the commit status, best effort;
* :mod:`.report_step`: ``kpigate github report`` from a record to an exit code.

The command line (:mod:`mlflow_kpigate.cli.github`) opens the deployment and hands its
record to :mod:`.report_step`; docs/github-action.md describes what users see. This
package reads no deployment itself: it works from the values it is given.
"""

from mlflow_kpigate.github.api import (
    GitHubClient,
    GitHubError,
    GitHubPermissionError,
    Response,
    parse_link_header,
)
from mlflow_kpigate.github.comment import (
    MAX_COMMENT_CHARS,
    CommentResult,
    find_comment,
    marker,
    render,
    upsert_comment,
)
from mlflow_kpigate.github.event import (
    PullRequestRef,
    Resolution,
    from_payload,
    head_sha,
    load_payload,
    resolve,
)
from mlflow_kpigate.github.record import Evaluation, Links, RolloutRecord, mlflow_links
from mlflow_kpigate.github.workflow import (
    append_summary,
    escape_data,
    escape_property,
    format_outputs,
    workflow_command,
    write_outputs,
)

__all__ = [
    "MAX_COMMENT_CHARS",
    "CommentResult",
    "Evaluation",
    "GitHubClient",
    "GitHubError",
    "GitHubPermissionError",
    "Links",
    "PullRequestRef",
    "Resolution",
    "Response",
    "RolloutRecord",
    "append_summary",
    "escape_data",
    "escape_property",
    "find_comment",
    "format_outputs",
    "from_payload",
    "head_sha",
    "load_payload",
    "marker",
    "mlflow_links",
    "parse_link_header",
    "render",
    "resolve",
    "upsert_comment",
    "workflow_command",
    "write_outputs",
]
