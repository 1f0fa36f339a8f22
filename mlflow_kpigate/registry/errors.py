"""Every call to MLflow, and the translation of its failures into one-line kpigate errors.

:class:`MlflowAccess` holds the one ``MlflowClient`` (its registry URI is the tracking
URI) and is the base of every part of :class:`~mlflow_kpigate.registry.Registry`.

Errors
    A registered model, version or alias that does not exist is a ``UsageError`` naming it
    (the caller passes ``not_found`` to :meth:`MlflowAccess._call`). Any other failure
    talking to MLflow (server down, database unreadable) is a
    :class:`~mlflow_kpigate.core.errors.KpigateError` whose one-line message names the
    tracking URI and the operation. Retries are MLflow's own: its HTTP client retries failed
    requests with exponential backoff per ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 7),
    ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (2) and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s),
    which rides out a server restart but means an unreachable server takes minutes to be
    reported; set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` (or a small number) to fail fast.
    No retries or sleeps are added here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.registry.limits import truncate

T = TypeVar("T")


def is_not_found(exc: MlflowException) -> bool:
    """Whether MLflow says the model, version, run or alias does not exist."""
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its cause chain) is a failure to reach the server."""
    try:
        import requests
        conn_types: tuple[type[BaseException], ...] = (requests.exceptions.ConnectionError,
                                                       ConnectionError)
    except ImportError:  # pragma: no cover - requests comes with mlflow
        conn_types = (ConnectionError,)
    markers = ("Max retries exceeded", "Connection refused", "Failed to establish",
               "Connection aborted", "Name or service not known")
    for item in _exception_chain(exc):
        if isinstance(item, conn_types) or any(m in str(item) for m in markers):
            return True
    return False


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return truncate(line, limit)


class MlflowAccess:
    """The lazily opened ``MlflowClient`` and the error translation around calls to it.

    ``tracking_uri`` defaults to MLflow's own resolution (``MLFLOW_TRACKING_URI`` or
    ``sqlite:///mlflow.db``); the registry URI is the same. Nothing is contacted until the
    first call, so a malformed model URI is reported without touching the store.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri: str = tracking_uri or mlflow.get_tracking_uri()
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """The ``MlflowClient``, created on first use (a bad URI is reported then)."""
        if self._client is None:
            with self._mlflow("open the tracking store"):
                self._client = MlflowClient(tracking_uri=self.tracking_uri,
                                            registry_uri=self.tracking_uri)
        return self._client

    def _failure(self, what: str, exc: BaseException) -> KpigateError:
        if is_connection_error(exc):
            detail = ("cannot connect; is the tracking server running and "
                      "MLFLOW_TRACKING_URI right?")
        else:
            detail = _first_line(getattr(exc, "message", None) or str(exc)
                                 or type(exc).__name__)
        return KpigateError(f"MLflow at {self.tracking_uri}: could not {what}: {detail}")

    @contextmanager
    def _mlflow(self, what: str) -> Iterator[None]:
        """Turn MLflow/transport failures into a one-line ``KpigateError``."""
        try:
            yield
        except KpigateError:
            raise
        except (MlflowException, OSError) as exc:
            raise self._failure(what, exc) from exc
        except Exception as exc:  # requests/sqlalchemy errors that MLflow lets through
            module = type(exc).__module__.split(".")[0]
            if module in ("requests", "urllib3", "sqlalchemy", "sqlite3"):
                raise self._failure(what, exc) from exc
            raise

    def _call(self, what: str, fn: Callable[..., T], *args: Any,
              not_found: Callable[[], KpigateError] | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; a not-found error becomes ``not_found()`` if given."""
        with self._mlflow(what):
            try:
                return fn(*args, **kwargs)
            except MlflowException as exc:
                if not_found is not None and is_not_found(exc):
                    raise not_found() from None
                raise
