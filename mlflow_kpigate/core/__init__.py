"""Value types every layer shares, and the few stateless helpers they need.

* the rollout's persisted state (:mod:`.state`: phase, weights, ``RolloutState``);
* what the gate judges and answers (:mod:`.samples`: ``StageSample``; :mod:`.baseline`:
  registry baselines; :mod:`.decision`: ``Decision`` with per-KPI ``Evidence``);
* what is recorded (:mod:`.records`: predictions, labels and the feedback wire format;
  :mod:`.events`: typed audit events; :mod:`.evaluation`: one replayable evaluation);
* MLflow's scoring payloads (:mod:`.payloads`);
* errors with exit codes, durations, YAML/JSON files, signal handling for servers.

Nothing here imports another kpigate layer except :mod:`mlflow_kpigate.kpis` (the
aggregates a stage sample holds); the import contract in ``.importlinter`` keeps it so.
"""
