"""Parsing a policy's YAML text strictly: no duplicate keys, no absurd nesting.

PyYAML's ``safe_load`` keeps the *last* of two equal keys (a second ``evaluation:`` block
silently replaces the first) and composes nested nodes recursively (a document nested
a few thousand levels deep ends in a ``RecursionError``). :func:`parse_policy_yaml` uses a
``SafeLoader`` that refuses both, each with the line numbers involved, as
:class:`PolicyYamlError` (a ``yaml.YAMLError``, so callers report it like any other YAML
syntax error).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

#: Deeper than any policy needs (a real one nests about six levels), far below Python's
#: recursion limit.
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class PolicyYamlError(yaml.YAMLError):
    """A YAML document this loader refuses; ``line`` is 1-based, ``message`` says why."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` refusing duplicate mapping keys and nesting deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise PolicyYamlError(line, f"nested more than {MAX_DEPTH} levels deep; a "
                                      "policy needs only a few (see docs/policy.md)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise PolicyYamlError(line, f"duplicate key {key!r} (first on line "
                                      f"{seen[key]}); keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_policy_yaml(text: str) -> Any:
    """The YAML document in ``text``; ``yaml.YAMLError`` (``PolicyYamlError`` for a
    duplicate key or too deep a nesting) when it cannot be used."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
