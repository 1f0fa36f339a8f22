"""The Model Router: how live traffic reaches the baseline and the candidate.

``backends.local`` is the embedded router (an ASGI app on 127.0.0.1 with its prediction
log, its traffic backend and its SQLite state store); ``backends.seldon`` drives Seldon
Core canaries on Kubernetes (manifests, guarded patches, readiness, and the rollout's
state in ConfigMaps). The controller only moves traffic weights, through the
:class:`~mlflow_kpigate.rollout.ports.TrafficBackend` each backend implements; each
backend turns them into routing.
"""
