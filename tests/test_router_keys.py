"""The embedded router's -C keys: parsed into DeploymentConfig, kept in RolloutState."""

from __future__ import annotations

import pytest

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.config import parse_config


def test_router_keys_parse():
    cfg = parse_config({"workers": "2", "candidate_timeout": "500ms", "log_fsync": "Always",
                        "max_body": "1MiB", "warm_candidate": "false"})
    assert (cfg.workers, cfg.candidate_timeout, cfg.log_fsync, cfg.max_body,
            cfg.warm_candidate) == (2, 0.5, "always", 2**20, False)
    assert parse_config({}).warm_candidate is True


@pytest.mark.parametrize(("raw", "needle"), [
    ({"workers": "0"}, "-C workers=0: must be a whole number from 1 to 64"),
    ({"candidate_timeout": "0s"}, "-C candidate_timeout=0s: must be more than 0"),
    ({"log_fsync": "sometimes"}, "-C log_fsync=sometimes: must be interval, always or never"),
    ({"max_body": "12 parsecs"}, "-C max_body=12 parsecs: must be a size"),
    ({"warm_candidate": "maybe"}, "-C warm_candidate=maybe: must be true or false"),
    ({"metrics_port": "70000"}, "-C metrics_port=70000: must be a port number"),
    ({"metrics_port": "-1"}, "-C metrics_port=-1: must be a port number"),
    ({"metrics_host": "localhost"}, "-C metrics_host=localhost: must be an IP address"),
])
def test_bad_router_keys_are_one_line_naming_the_key(raw: dict[str, str], needle: str):
    with pytest.raises(UsageError) as info:
        parse_config(raw)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_a_cold_candidate_choice_survives_the_state_round_trip():
    state = RolloutState(name="fraud", model_name="m", candidate_version="2",
                         baseline_version="1", candidate_uri="models:/m/2",
                         baseline_uri="models:/m/1", policy_file="p.yaml",
                         tracking_uri="sqlite:///x.db", port=5000, warm_candidate=False)
    data = state.to_dict()
    assert data["warm_candidate"] is False
    assert RolloutState.from_dict(data).warm_candidate is False
    # The default is left out, so a state without the key reads as warm.
    assert "warm_candidate" not in state.evolve(warm_candidate=True).to_dict()


def test_the_controller_metrics_keys_parse_and_survive_the_state_round_trip():
    cfg = parse_config({"metrics_port": "9102", "metrics_host": "0.0.0.0"})
    assert (cfg.metrics_port, cfg.metrics_host) == (9102, "0.0.0.0")
    assert (parse_config({}).metrics_port, parse_config({}).metrics_host) == (0, "127.0.0.1")
    state = RolloutState(name="fraud", model_name="m", candidate_version="2",
                         baseline_version="1", candidate_uri="models:/m/2",
                         baseline_uri="models:/m/1", policy_file="p.yaml",
                         tracking_uri="sqlite:///x.db", port=5000, metrics_port=9102)
    assert RolloutState.from_dict(state.to_dict()).metrics_port == 9102
    # Defaults are left out: a state saved before the keys existed reads as the defaults.
    assert not {"metrics_port", "metrics_host"} & set(state.evolve(metrics_port=0).to_dict())
