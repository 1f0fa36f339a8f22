"""Registered model versions: parse a model URI and resolve it to a :class:`ModelRef`.

Model URIs
    ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` are accepted and resolved to a
    :class:`ModelRef` (canonical ``models:/NAME/VERSION``). A bare ``models:/NAME`` is a
    LoggedModel id in MLflow 3, stage URIs (``models:/NAME/Production``) use the deprecated
    stages, and ``models:/NAME/latest`` changes under a running rollout: all three are
    rejected with a one-line :class:`~mlflow_kpigate.core.errors.UsageError` saying what to give.

The resolved ref also carries where the version's files live (``storage_uri``): the
LoggedModel's artifact location in MLflow 3, the source run's artifacts, or the source.
"""

from __future__ import annotations

import re
from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.registry.errors import MlflowAccess, is_not_found

_STAGES = {"production", "staging", "archived", "none"}
_LOGGED_MODEL_SOURCE = re.compile(r"^models:/(m-[0-9a-fA-F]+)/?$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a registered-model URI; ``UsageError`` when unusable."""
    text = str(uri).strip()
    hint = "give models:/NAME/VERSION or models:/NAME@ALIAS"
    if not text.startswith("models:/"):
        scheme = text.split(":", 1)[0] + ":" if ":" in text else "no scheme"
        raise UsageError(f"{uri}: not a registered-model URI ({scheme}); {hint}")
    rest = text[len("models:/"):].strip("/")
    if not rest:
        raise UsageError(f"{uri}: no model name; {hint}")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if not name or not alias or "/" in alias or "/" in name:
            raise UsageError(f"{uri}: malformed alias URI; {hint}")
        return name, None, alias
    if "/" not in rest:
        raise UsageError(f"{uri}: in MLflow 3 models:/{rest} names a LoggedModel id, not "
                         f"a registered version; {hint}")
    name, suffix = rest.split("/", 1)
    if "/" in suffix:
        raise UsageError(f"{uri}: a registered-model URI has no path after the version; "
                         f"{hint}")
    if suffix.lower() in _STAGES:
        raise UsageError(f"{uri}: stages are deprecated in MLflow; use an alias "
                         f"(models:/{name}@champion) or a version (models:/{name}/3)")
    if suffix.lower() == "latest":
        raise UsageError(f"{uri}: 'latest' changes while a rollout runs; give the version "
                         f"number or an alias (models:/{name}@ALIAS)")
    if not suffix.isdigit() or int(suffix) < 1:
        raise UsageError(f"{uri}: version {suffix!r} is not a version number; {hint}")
    return name, str(int(suffix)), None


def model_id_of(mv: Any) -> str | None:
    """The LoggedModel id of a ``ModelVersion``: its ``model_id``, else its
    ``models:/m-…`` source (MLflow 3.17's registry API leaves ``model_id`` empty for a
    version registered by ``log_model``); None for a version without one."""
    match = _LOGGED_MODEL_SOURCE.match(str(mv.source or ""))
    model_id = getattr(mv, "model_id", None) or (match.group(1) if match else None)
    return str(model_id) if model_id else None


class ModelVersions(MlflowAccess):
    """Resolving model URIs and the default baseline to :class:`ModelRef`."""

    def resolve(self, uri: str) -> ModelRef:
        """Resolve ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; ``UsageError`` otherwise."""
        name, version, alias = parse_model_uri(uri)
        model = self._call(f"read registered model {name!r}", self.client.get_registered_model,
                           name, not_found=lambda: UsageError(
                               f"{uri}: no registered model named {name!r} at "
                               f"{self.tracking_uri}; check the name (registered models are "
                               "listed in the MLflow UI under Models)"))
        if alias is not None:
            aliases = dict(getattr(model, "aliases", None) or {})
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise UsageError(f"{uri}: registered model {name!r} has no alias {alias!r} "
                                 f"(its aliases: {known}); set it with MlflowClient()."
                                 f"set_registered_model_alias({name!r}, {alias!r}, VERSION) "
                                 "or give models:/NAME/VERSION")
            version = str(aliases[alias])
        assert version is not None
        return self._version_ref(uri, name, version)

    def default_baseline(self, model_name: str, alias: str = "champion") -> ModelRef:
        """The version behind ``alias`` (the serving champion by default)."""
        model = self._call(f"read registered model {model_name!r}",
                           self.client.get_registered_model, model_name,
                           not_found=lambda: UsageError(
                               f"no registered model named {model_name!r} at "
                               f"{self.tracking_uri}"))
        aliases = dict(getattr(model, "aliases", None) or {})
        if alias not in aliases:
            raise UsageError(
                f"registered model {model_name!r} has no {alias!r} alias to use as the "
                f"baseline; set it with MlflowClient().set_registered_model_alias("
                f"{model_name!r}, {alias!r}, VERSION) or pass -C "
                f"baseline=models:/{model_name}/VERSION")
        return self._version_ref(f"models:/{model_name}@{alias}", model_name,
                                 str(aliases[alias]))

    def _version_ref(self, uri: str, name: str, version: str) -> ModelRef:
        def missing() -> UsageError:
            latest = self._latest_version(name)
            what = f"its latest is {latest}" if latest else "it has no versions"
            return UsageError(f"{uri}: registered model {name!r} has no version {version} "
                              f"({what})")

        mv = self._call(f"read model version {name}/{version}", self.client.get_model_version,
                        name, version, not_found=missing)
        status = str(getattr(mv, "status", "READY") or "READY")
        if status == "FAILED_REGISTRATION":
            raise UsageError(f"{uri}: model version {name}/{version} failed to register "
                             f"({mv.status_message or 'no message'}); register it again")
        source = str(mv.source or "")
        return ModelRef(name=name, version=str(mv.version), uri=f"models:/{name}/{mv.version}",
                        run_id=mv.run_id or None, source=source,
                        storage_uri=self._storage_uri(mv, name, str(mv.version)))

    def _latest_version(self, name: str) -> str | None:
        with self._mlflow(f"list versions of {name!r}"):
            found = self.client.search_model_versions(
                f"name = '{name}'" if "'" not in name else f'name = "{name}"',
                max_results=1, order_by=["version_number DESC"])
        return str(found[0].version) if found else None

    def _storage_uri(self, mv: Any, name: str, version: str) -> str:
        """Where the version's files are: LoggedModel artifacts, run artifacts, or source."""
        source = str(mv.source or "")
        model_id = model_id_of(mv)
        if model_id:
            with self._mlflow(f"read logged model {model_id}"):
                try:
                    location = self.client.get_logged_model(model_id).artifact_location
                except MlflowException as exc:
                    if not is_not_found(exc):
                        raise
                    location = None
            if location:
                return str(location)
        if source.startswith("runs:/"):
            run_id, _, path = source[len("runs:/"):].partition("/")
            run = self._call(f"read run {run_id}", self.client.get_run, run_id,
                             not_found=lambda: UsageError(
                                 f"models:/{name}/{version}: its source run {run_id} no "
                                 "longer exists"))
            base = str(run.info.artifact_uri).rstrip("/")
            return f"{base}/{path}" if path else base
        if source.startswith("models:/"):
            return self._call(f"resolve the files of {name}/{version}",
                              self.client.get_model_version_download_uri, name, version)
        return source
