"""The operator's dashboard row, its alerts and their runbook, and the install's docs.

promtool checks and unit-tests the rules and parses the dashboard's PromQL in
tests/test_k8s_examples.py (which covers the operator's rules and panels too); here:
the Operator row shows every operator series and selects by the labels each has, each
operator alert links a runbook section that exists in docs/kubernetes.md, and the docs'
RBAC table and apply commands match the install.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from _install import INSTALL, OPERATOR_GRANTS, OVERLAYS
from _k8s_validation import DASHBOARD, OPERATOR_METRICS, ROOT, metric_names, panels, rules

DOCS = ROOT / "docs" / "kubernetes.md"
OPERATOR_ALERTS = ("KpigateOperatorNoLeader", "KpigateOperatorReconcileErrors",
                   "KpigateOperatorWorkerCrashLooping")
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


def _operator_row() -> list[dict[str, Any]]:
    """The panels under the dashboard's row titled Operator."""
    top = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    (start,) = [i for i, p in enumerate(top) if p["type"] == "row" and p["title"] == "Operator"]
    row = top[start].get("panels", [])
    for panel in top[start + 1:]:
        if panel["type"] == "row":
            break
        row.append(panel)
    return row


def _by_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr)
            for label in group.split(",")}


def test_operator_row_shows_every_operator_series_by_its_own_labels():
    shown: set[str] = set()
    for panel in _operator_row():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            (name,) = metric_names(expr)
            shown.add(name)
            labels = OPERATOR_METRICS[name]
            # `namespace` is the series' own, or the operator's from the scrape target.
            assert _by_labels(expr) <= labels | {"namespace"}, expr
            for legend in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
                assert legend in _by_labels(expr), (legend, expr)
            if "namespace" in labels:  # about the rollouts' namespace: the chosen one
                assert 'namespace="$namespace"' in expr, expr
            else:  # about an operator, which may run in another namespace
                assert "$namespace" not in expr, expr
                assert "namespace" in _by_labels(expr), expr
    assert shown == set(OPERATOR_METRICS)
    other = [t["expr"] for p in panels(json.loads(DASHBOARD.read_text())["panels"])
             if p not in _operator_row() for t in p.get("targets", [])]
    assert not [e for e in other if metric_names(e) & set(OPERATOR_METRICS)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _sections() -> list[tuple[int, str]]:
    return [(len(m.group(1)), m.group(2)) for m in
            re.finditer(r"^(#{2,4}) (.+)$", DOCS.read_text(encoding="utf-8"), re.M)]


@pytest.mark.parametrize("alert", OPERATOR_ALERTS)
def test_operator_alerts_link_their_runbook_section(alert):
    (rule,) = [r for r in rules() if r.get("alert") == alert]
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert len(annotations["description"]) > len(annotations["summary"])
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert (ROOT / page).resolve() == DOCS
    sections = _sections()
    runbook = sections.index((2, "Runbook"))
    following = []
    for level, title in sections[runbook + 1:]:
        if level <= 2:
            break
        following.append(title)
    assert anchor in {_slug(t) for t in following}, f"no Runbook section #{anchor}"
    assert _slug(alert) == anchor
    used = _by_labels(rule["expr"])
    (name,) = metric_names(rule["expr"])
    assert used <= OPERATOR_METRICS[name] | {"namespace"}


def test_slugs_are_githubs():
    assert _slug("RBAC: what the operator may do, and why") == \
        "rbac-what-the-operator-may-do-and-why"
    assert _slug("ModelRollout (v1alpha1)") == "modelrollout-v1alpha1"


def test_every_link_into_the_kubernetes_docs_finds_its_section():
    anchors = {_slug(title) for _, title in _sections()}
    texts = [DOCS.read_text(encoding="utf-8"), (INSTALL / "README.md").read_text()]
    texts += [r["annotations"].get("runbook_url", "") for r in rules()]
    for text in texts:
        for anchor in re.findall(r"kubernetes\.md#([\w-]+)|\]\(#([\w-]+)\)", text):
            name = anchor[0] or anchor[1]
            assert name in anchors, f"#{name}"


def _docs_rbac_rows() -> dict[str, set[str]]:
    """Resource -> verbs, from the docs' table "RBAC: what the operator may do"."""
    text = DOCS.read_text(encoding="utf-8")
    table = text.split("### RBAC: what the operator may do, and why", 1)[1].split("\n\n")[2]
    rows: dict[str, set[str]] = {}
    previous: set[str] = set()
    for line in table.splitlines()[2:]:
        resources_cell, verbs_cell = line.split(" | ")[:2]
        verbs = previous if verbs_cell.strip() == "the same" else {
            v for v in re.findall(r"[a-z]+", verbs_cell) if v in VERBS}
        for resource in re.findall(r"`([a-z/]+)`", resources_cell):
            rows.setdefault(resource, set()).update(verbs)
        previous = verbs
    return rows


def test_the_docs_rbac_table_lists_exactly_the_granted_verbs():
    granted: dict[str, set[str]] = {}
    for _, resource, verb, _ in OPERATOR_GRANTS:
        granted.setdefault(resource, set()).add(verb)
    granted["leases"] = {"create", "get", "update"}
    assert _docs_rbac_rows() == granted


def test_the_readmes_apply_every_overlay():
    text = (INSTALL / "README.md").read_text(encoding="utf-8")
    docs = DOCS.read_text(encoding="utf-8")
    for overlay in ("namespaced", "cluster"):
        assert f"kubectl apply -k deploy/kubernetes/{overlay}" in text
        assert f"kubectl apply -k deploy/kubernetes/{overlay}" in docs
    assert 'kubectl apply -n "$NS" -k deploy/kubernetes/rollout-namespace' in text
    assert 'kubectl apply -n "$NS" -k deploy/kubernetes/rollout-namespace' in docs
    assert set(OVERLAYS) <= {p.name for p in INSTALL.iterdir() if p.is_dir()}
