"""The Rollback Controller: acts on the gate's decisions and keeps the rollout's record.

* :mod:`.controller` — one evaluation per interval: samples → gate → transition → save;
* :mod:`.transitions` — pure state changes (promote, rollback, pause, resume);
* :mod:`.effects` — what a saved state must reach (traffic, MLflow, alerts, the end);
* :mod:`.ports` — the interfaces of its collaborators, :mod:`.memory` their in-memory
  implementations;
* :mod:`.replay` — recorded evaluations re-judged; :mod:`.exposition` — the decision
  metrics a cluster controller serves to Prometheus.
"""
