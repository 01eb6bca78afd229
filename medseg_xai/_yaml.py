"""Safe YAML for configuration files (REPORT.yaml, criteria, plans): limits before trust.

``yaml.safe_load`` refuses Python objects but not a "billion laughs" document: a 2 KB file of
nested aliases expands to billions of nodes, and whatever walks the result (the report renderer)
runs until the machine kills it. Here a document is refused, naming the file and the limit, when

- the file is larger than ``max_bytes`` (default 1 MiB; configuration is text written by hand),
- it holds more than ``max_aliases`` alias references (default 100),
- its node graph, with every alias expanded, has more than ``max_nodes`` nodes (default 100,000),
- it nests deeper than ``max_depth`` (default 50), or
- a mapping repeats a key (PyYAML keeps the last silently: two ``approvers`` blocks).

The alias and node limits are checked on the composed graph before anything is constructed, so
refusing a bomb takes milliseconds and no memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["YAML_LIMITS", "load_yaml_file", "load_yaml_text"]

YAML_LIMITS = {"max_bytes": 1 << 20, "max_aliases": 100, "max_nodes": 100_000, "max_depth": 50}


class _CountingLoader(yaml.SafeLoader):
    """SafeLoader that counts alias references while composing and refuses repeated keys."""

    def __init__(self, stream: str, max_aliases: int) -> None:
        super().__init__(stream)
        self.n_aliases = 0
        self.max_aliases = max_aliases

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
        if self.check_event(yaml.events.AliasEvent):
            self.n_aliases += 1
            if self.n_aliases > self.max_aliases:
                raise _Limit(f"more than {self.max_aliases} alias references (*name)")
        return super().compose_node(parent, index)


class _Limit(Exception):
    pass


def _walk(node: yaml.Node, max_nodes: int, max_depth: int) -> None:
    """Expanded node count and depth of a composed graph, without expanding it: a node
    reached through N aliases counts N times (memoised per node, so a bomb is measured in
    time linear in its file size)."""
    sizes: dict[int, tuple[int, int]] = {}

    def visit(n: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > max_depth:
            raise _Limit(f"nesting deeper than {max_depth} levels")
        key = id(n)
        if key in sizes:
            return sizes[key]
        size, deep = 1, 0
        if isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        else:
            children = []
        for child in children:
            s, d = visit(child, depth + 1)
            size, deep = size + s, max(deep, d + 1)
            if size > max_nodes:
                raise _Limit(f"more than {max_nodes} values once aliases are expanded")
        sizes[key] = (size, deep)
        return sizes[key]

    visit(node, 0)


def _unique_keys(node: yaml.Node) -> None:
    seen_nodes: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen_nodes:
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys = [k.value for k, _ in n.value if isinstance(k, yaml.ScalarNode)]
            dup = sorted({k for k in keys if keys.count(k) > 1 and k != "<<"})
            if dup:
                raise _Limit(f"the key {dup[0]!r} appears twice in one mapping (line "
                             f"{n.start_mark.line + 1}); expected each key once")
            stack.extend(c for pair in n.value for c in pair)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def load_yaml_text(text: str, what: str, **limits: int) -> Any:
    """Parse YAML text within :data:`YAML_LIMITS` (overridable by keyword).

    Raises
    ------
    ValueError
        Naming ``what`` and the limit or the syntax error (line number).
    """
    lim = {**YAML_LIMITS, **limits}
    if len(text.encode("utf-8", "surrogatepass")) > lim["max_bytes"]:
        raise ValueError(f"{what}: expected a YAML file of at most {lim['max_bytes']} bytes, "
                         f"got {len(text.encode('utf-8', 'surrogatepass'))}")
    loader = _CountingLoader(text, lim["max_aliases"])
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _walk(node, lim["max_nodes"], lim["max_depth"])
        _unique_keys(node)
        return loader.construct_document(node)
    except _Limit as exc:
        raise ValueError(f"{what}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"{what}: expected valid YAML, could not parse it{where} "
                         f"({problem})") from None
    except RecursionError:
        raise ValueError(f"{what}: refused: nesting too deep to parse") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | os.PathLike, what: str, **limits: int) -> Any:
    """Read and parse a YAML file within the limits (size checked before reading)."""
    p = Path(path)
    lim = {**YAML_LIMITS, **limits}
    size = p.stat().st_size
    if size > lim["max_bytes"]:
        raise ValueError(f"{what}: expected a YAML file of at most {lim['max_bytes']} bytes, "
                         f"{p.name!r} has {size}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: expected UTF-8 text, {p.name!r} has byte "
                         f"0x{exc.object[exc.start]:02x} at offset {exc.start}") from None
    return load_yaml_text(text, f"{what} {p.name!r}", **limits)
