"""Which rollout a command means: the target options every rollout command shares.

``kpigate status|watch|report|promote|rollback|pause|resume|replay|list`` take

* ``-t/--target TARGET``: ``kpigate`` (default, this machine), ``kpigate:/local`` or
  ``kpigate:/seldon/NAMESPACE``, as for ``mlflow deployments``;
* ``--namespace NS``: shorthand for ``-t kpigate:/seldon/NS`` (given with a ``-t`` that
  names another target, it is a usage error);
* ``--kubeconfig FILE`` / ``--context NAME``: how to reach the cluster, passed to the
  deployer as the ``-C kubeconfig=`` / ``kube_context=`` keys (cluster targets only);
* ``--state-dir DIR``: the embedded backend's state directory (and, for a cluster
  rollout, where this machine keeps its scratch copy: policy, report).

:func:`rollout_target` adds them to a command and hands it one :class:`Where`, whose
:meth:`Where.deployer` comes from :func:`~mlflow_kpigate.deploy.targets.deployer_for`.
Nothing here imports the Kubernetes client: a local target never loads it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mlflow_kpigate.core.errors import UsageError

if TYPE_CHECKING:
    from mlflow_kpigate.deploy.deployer import Deployer

F = TypeVar("F", bound=Callable[..., Any])
LOCAL_TARGET = "kpigate"

STATE_DIR = click.option("--state-dir", type=click.Path(file_okay=False),
                         help="State directory (default $KPIGATE_STATE_DIR or ~/.kpigate).")


def _is_cluster(target: str) -> bool:
    scheme, _, rest = target.strip().partition(":")
    return scheme == "kpigate" and rest.strip("/").split("/")[0] == "seldon"


@dataclass(frozen=True)
class Where:
    """The target a command addresses, checked, and the config its deployer is given."""

    target: str = LOCAL_TARGET
    state_dir: str | None = None
    kubeconfig: str | None = None
    context: str | None = None

    @property
    def cluster(self) -> bool:
        """Whether the target is a cluster (``kpigate:/seldon/NS``)."""
        return _is_cluster(self.target)

    def config(self) -> dict[str, str] | None:
        """The deployer's config: state_dir, kubeconfig, kube_context (None when empty)."""
        config = {key: value for key, value in (("state_dir", self.state_dir),
                                                ("kubeconfig", self.kubeconfig),
                                                ("kube_context", self.context)) if value}
        return config or None

    def deployer(self) -> Deployer:
        """The deployer of the target (``UsageError`` for an unknown target)."""
        from mlflow_kpigate.deploy.targets import deployer_for

        return deployer_for(self.target)

    @classmethod
    def of(cls, target: str | None, namespace: str | None, kubeconfig: str | None,
           context: str | None, state_dir: str | None) -> Where:
        """Check the options together (``UsageError`` naming the one to fix)."""
        if namespace is not None:
            from mlflow_kpigate.backends.seldon.target import dns_label_problem

            namespace = namespace.strip()
            problem = dns_label_problem(namespace)
            if problem:
                raise UsageError(f"--namespace: {problem}")
            shorthand = f"kpigate:/seldon/{namespace}"
            if target is not None and not _same_cluster(target, namespace):
                raise UsageError(f"--namespace {namespace} and -t {target} name different "
                                 f"targets; give one of them (--namespace {namespace} means "
                                 f"-t {shorthand})")
            target = shorthand
        target = (target or LOCAL_TARGET).strip()
        if not _is_cluster(target):
            for flag, value in (("--kubeconfig", kubeconfig), ("--context", context)):
                if value:
                    raise UsageError(f"{flag}: only for a cluster rollout; add "
                                     "--namespace NS or -t kpigate:/seldon/NS")
        if kubeconfig and not Path(kubeconfig).expanduser().is_file():
            raise UsageError(f"--kubeconfig {kubeconfig}: file not found; give the path of "
                             "a kubeconfig file")
        return cls(target, state_dir, kubeconfig, context)


def _same_cluster(target: str, namespace: str) -> bool:
    if not _is_cluster(target):
        return False
    from mlflow_kpigate.backends.seldon.target import parse_target_uri

    return parse_target_uri(target) == namespace


_OPTIONS = (
    click.option("-t", "--target", default=None,
                 help="Where the rollout runs: kpigate (default, this machine), "
                      "kpigate:/local or kpigate:/seldon/NAMESPACE."),
    click.option("--namespace", default=None,
                 help="The rollout's Kubernetes namespace: shorthand for "
                      "-t kpigate:/seldon/NAMESPACE."),
    click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
                 help="Cluster rollouts: kubeconfig file (default: the in-cluster "
                      "service account, else $KUBECONFIG or ~/.kube/config)."),
    click.option("--context", default=None,
                 help="Cluster rollouts: the kubeconfig context to use."),
    STATE_DIR,
)


def rollout_target(func: F) -> F:
    """Add the target options to a command; it receives them as ``where: Where``."""
    @functools.wraps(func)
    def wrapper(*args: Any, target: str | None, namespace: str | None,
                kubeconfig: str | None, context: str | None, state_dir: str | None,
                **kwargs: Any) -> Any:
        return func(*args, where=Where.of(target, namespace, kubeconfig, context, state_dir),
                    **kwargs)

    decorated: Any = wrapper
    for option in reversed(_OPTIONS):
        decorated = option(decorated)
    return decorated
