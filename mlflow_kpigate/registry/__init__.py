"""MLflow registry and tracking: resolve model versions, read baseline KPIs, write tags,
aliases, and the rollout run with its per-evaluation metrics and artifacts.

Everything that talks to MLflow goes through :class:`Registry`; the gate, the controller
and the report never import ``mlflow`` themselves. It works with the default local store
(``sqlite:///…/mlflow.db``) and with a tracking server (``http://host:port``), through one
``MlflowClient`` whose registry URI is the tracking URI.

:class:`Registry` is composed of one part per concern, all sharing that client:

* :mod:`.errors`: the client, and MLflow failures as one-line kpigate errors (retries);
* :mod:`.versions`: model URIs resolved to :class:`ModelRef`;
* :mod:`.baselines`: baseline KPIs from earlier rollouts and the training run;
* :mod:`.tags`: ``kpigate.*`` model-version tags and aliases;
* :mod:`.runs`: the rollout run in ``kpigate-rollouts`` (and the experiment's kind);
* :mod:`.descriptions`: the rollout's section of a version's description, run links;
* :mod:`.logged_models`: the final KPIs on the candidate's LoggedModel;
* :mod:`.evaluations`: the run's evaluation records and policy, for replay;
* :mod:`.outputs`: whether a version's model returns scores or labels (its signature);
* :mod:`.limits`: MLflow's size limits and :func:`truncate`.
"""

from __future__ import annotations

from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.registry.baselines import MAX_ROLLOUT_RUNS, BaselineKpis
from mlflow_kpigate.registry.descriptions import VersionDescriptions
from mlflow_kpigate.registry.evaluations import EVALUATIONS_DIR, EvaluationRecords
from mlflow_kpigate.registry.limits import MAX_PARAM_VALUE, MAX_TAG_VALUE, truncate
from mlflow_kpigate.registry.logged_models import LoggedModelKpis
from mlflow_kpigate.registry.outputs import ModelOutputs
from mlflow_kpigate.registry.runs import DECISION_CODES, ROLLOUT_EXPERIMENT, RolloutRuns
from mlflow_kpigate.registry.tags import SUMMARY_TAG, TAG_PREFIX, TagsAndAliases
from mlflow_kpigate.registry.versions import ModelVersions

__all__ = [
    "DECISION_CODES",
    "EVALUATIONS_DIR",
    "MAX_PARAM_VALUE",
    "MAX_ROLLOUT_RUNS",
    "MAX_TAG_VALUE",
    "ROLLOUT_EXPERIMENT",
    "SUMMARY_TAG",
    "TAG_PREFIX",
    "ModelRef",
    "Registry",
    "truncate",
]


class Registry(ModelVersions, BaselineKpis, TagsAndAliases, RolloutRuns, EvaluationRecords,
               ModelOutputs, VersionDescriptions, LoggedModelKpis):
    """kpigate's view of one MLflow tracking server / registry (see the module docstring).

    ``tracking_uri`` defaults to MLflow's own resolution (``MLFLOW_TRACKING_URI`` or
    ``sqlite:///mlflow.db``); the registry URI is the same. Nothing is contacted until the
    first call, so a malformed model URI is reported without touching the store.
    """
