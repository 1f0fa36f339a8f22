"""The distribution's metadata against the code: every third-party import is declared, in the
base or in the extra that needs it; the base has nothing only the cluster path or the tests
use; one version; a PEP 517 build system; the missing-extra message.

setup.py's declarations are read from the metadata setuptools writes (``egg_info``, what
pip sees), the imports with ``ast``, and import names are mapped to distributions through
this venv's installed metadata (``importlib.metadata.packages_distributions``).
tests/test_fresh_install.py installs the package for real into a venv without extras.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sys
from collections.abc import Mapping

import pytest
from _packaging import CLUSTER_ONLY, ROOT, Declared, declared, third_party_imports
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlflow_kpigate import __version__
from mlflow_kpigate.core import exit_codes
from mlflow_kpigate.core.extras import SELDON, Extra, MissingExtra, require

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which mypy (a test tool) installs there
    import tomli as tomllib

#: Base requirements the package does not import itself, and why they are there.
NOT_IMPORTED: dict[str, str] = {}


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> Declared:
    return declared(tmp_path_factory.mktemp("egg"))


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    return third_party_imports()


@functools.cache
def _installed() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    names = _installed().get(module)
    assert names, f"{module}: imported by the package but no installed distribution has it"
    return {canonicalize_name(name) for name in names}


def test_every_third_party_import_is_declared(metadata, imports):
    runtime = metadata.base | metadata.extras["seldon"]
    undeclared = {module: sorted(users) for module, users in imports.items()
                  if not _distributions(module) & runtime}
    assert not undeclared, f"imported but not in install_requires or the seldon extra: " \
                           f"{undeclared}"
    assert {"fastapi", "uvicorn", "pandas", "requests", "starlette", "matplotlib"} <= \
        imports.keys()  # what the audit found undeclared before


def test_what_only_the_seldon_extra_provides_is_imported_by_cluster_modules_only(
        metadata, imports):
    seldon_only = metadata.extras["seldon"] - metadata.base
    assert seldon_only == metadata.extras["seldon"], "the base repeats the seldon extra"
    for module, users in imports.items():
        if _distributions(module) & seldon_only:
            assert module in SELDON.modules, f"{module}: add it to core/extras.py SELDON"
            outside = sorted(user for user in users if not user.startswith(CLUSTER_ONLY))
            assert not outside, f"{module} is imported outside the cluster path: {outside}"
    provided = {canonicalize_name(d) for module in SELDON.modules
                for d in _installed().get(module, [])}
    assert provided == metadata.extras["seldon"], \
        "core/extras.py SELDON.modules and setup.py's seldon extra name different packages"


def test_the_base_holds_only_what_the_package_imports(metadata, imports):
    imported = set().union(*(_distributions(module) for module in imports))
    unused = metadata.base - imported - set(NOT_IMPORTED)
    assert not unused, f"install_requires lists packages the package never imports: {unused}"
    assert "jsonschema" not in metadata.base  # only the tests use it
    assert "jsonschema" in metadata.extras["test"]
    assert metadata.extras["seldon"] <= metadata.extras["test"]  # the tests drive the cluster


def test_the_version_is_written_once(metadata):
    assert metadata.version == __version__
    written = re.findall(r'^__version__ = "([^"]+)"$',
                         (ROOT / "mlflow_kpigate" / "_version.py").read_text(), re.MULTILINE)
    assert written == [__version__]
    for path in (ROOT / "setup.py", ROOT / "mlflow_kpigate" / "__init__.py",
                 ROOT / "scripts" / "build-image.sh"):
        assert __version__ not in path.read_text(encoding="utf-8"), path


def test_pyproject_names_the_build_system_and_leaves_metadata_to_setup_py():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert set(doc) == {"build-system"}
    build = doc["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert {canonicalize_name(Requirement(r).name) for r in build["requires"]} == \
        {"setuptools", "wheel"}


def test_a_missing_extra_is_one_usage_line_naming_it():
    extra = Extra("seldon", ("kubernetes", "kpigate_no_such_module"))
    with pytest.raises(MissingExtra) as raised:
        require(extra, "-t kpigate:/seldon/models")
    assert raised.value.exit_code == exit_codes.USAGE == 2
    assert str(raised.value) == (
        "-t kpigate:/seldon/models needs the 'seldon' extra (kpigate_no_such_module not "
        "installed): pip install 'mlflow-kpigate[seldon]'")
    require(SELDON, "-t kpigate:/seldon/models")  # installed here: no error
