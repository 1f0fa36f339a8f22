"""JSON patch (RFC 6902, with JSON pointers, RFC 6901) and JSON merge patch (RFC 7386) for
the fake Kubernetes API server (:mod:`fake_kube`, which re-exports these names)."""

from __future__ import annotations

import copy
import re
from typing import Any


# -- JSON pointer / JSON patch (RFC 6901 / RFC 6902) and merge patch (RFC 7386) -------------
class PatchError(Exception):
    """A JSON patch operation does not apply to the document."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not re.fullmatch(r"0|[1-9][0-9]*", token):
        raise PatchError(f"invalid array index {token!r}")
    idx = int(token)
    if idx > len(container) or (idx == len(container) and not allow_end):
        raise PatchError(f"array index {idx} out of bounds")
    return idx


def _parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    node = doc
    for tok in tokens[:-1]:
        if isinstance(node, dict):
            if tok not in node:
                raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")
            node = node[tok]
        elif isinstance(node, list):
            node = node[_index(node, tok, allow_end=False)]
        else:
            raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return node, tokens[-1]


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    node, last = _parent(doc, tokens)
    if isinstance(node, dict):
        if last not in node:
            raise PatchError(f"doc is missing key: /{'/'.join(tokens)}")
        return node[last]
    if isinstance(node, list):
        return node[_index(node, last, allow_end=False)]
    raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    node, last = _parent(doc, tokens)
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list):
        node.insert(_index(node, last, allow_end=True), value)
    else:
        raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> tuple[Any, Any]:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    node, last = _parent(doc, tokens)
    if isinstance(node, dict):
        if last not in node:
            raise PatchError(f"remove operation does not apply: doc is missing path: "
                             f"/{'/'.join(tokens)}")
        return doc, node.pop(last)
    if isinstance(node, list):
        return doc, node.pop(_index(node, last, allow_end=False))
    raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values (``True`` is not ``1``, ``1`` equals ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def apply_json_patch(doc: Any, ops: list[Any]) -> Any:
    """RFC 6902: apply ``ops`` to a copy of ``doc``; :class:`PatchError` if any does not apply."""
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise PatchError(f"operation is not an object: {op!r}")
        kind = op.get("op")
        tokens = _pointer(op.get("path"))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{kind} operation has no value")
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, tokens)
        elif kind == "replace":
            _get(doc, tokens)  # must exist
            if tokens:
                doc, _ = _remove(doc, tokens)
            doc = _add(doc, tokens, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"))
            if kind == "move":
                if tokens[:len(source)] == source and tokens != source:
                    raise PatchError("cannot move a value into one of its children")
                doc, value = _remove(doc, source)
            else:
                value = copy.deepcopy(_get(doc, source))
            doc = _add(doc, tokens, value)
        elif kind == "test":
            if not json_equal(_get(doc, tokens), op["value"]):
                raise PatchError(f"testing value {op['path']} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``null`` deletes a key, objects merge recursively, anything else (lists
    included) replaces the target value wholesale."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out
