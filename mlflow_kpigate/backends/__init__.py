"""The Model Router: how live traffic reaches the baseline and the candidate.

``backends.local`` is the embedded router (an ASGI app on 127.0.0.1 with its prediction
log, see :mod:`mlflow_kpigate.backends.local`); a Kubernetes backend (Seldon Core) will sit
next to it. The controller only moves traffic weights; each backend turns them into
routing.
"""
