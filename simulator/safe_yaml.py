"""The one YAML loader for recipe, sweep and accelerator files: safe, strict, bounded.

On top of `yaml.SafeLoader` (no ``!!python`` tags):

* **Duplicate keys are errors.** PyYAML keeps the last of two equal keys
  silently; a recipe with ``w_bits: 8`` and later ``w_bits: 4`` is more
  likely a mistake than an override.
* **Alias expansion is capped.** Aliases share nodes, so a "billion laughs"
  document (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...) parses into
  a few hundred nodes that expand to billions once anything walks them (a
  sweep grid, ``json.dumps``). The composed node graph is measured as if
  every alias were copied (`MAX_EXPANDED_NODES`), before any object is
  constructed; a recursive alias (``&a [*a]``) is refused as well.
* **Documents are small.** Files over `MAX_YAML_BYTES` are refused before
  parsing (`read_capped`).

Errors are `yaml.YAMLError`s with a ``problem`` and ``problem_mark`` (the
callers already turn those into one ``<file>: invalid YAML at line ...``
line) or, for the size, an `InputError`.
"""

from __future__ import annotations

from typing import IO

import yaml

from simulator.errors import InputError

__all__ = ["StrictLoader", "MAX_YAML_BYTES", "MAX_EXPANDED_NODES", "read_capped"]

MAX_YAML_BYTES = 1 << 20          # 1 MiB: the bundled files are under 4 KiB
MAX_EXPANDED_NODES = 100_000      # the bundled files expand to under 500 nodes


def read_capped(f: IO[str], path) -> str:
    """Read a text file opened by the caller, refusing more than `MAX_YAML_BYTES` characters."""
    text = f.read(MAX_YAML_BYTES + 1)
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"{path}: larger than {MAX_YAML_BYTES} bytes, expected a small YAML file")
    return text


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of ``root`` with every alias copied; raises on a cycle or above the cap (iterative)."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_EXPANDED_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand to more than {MAX_EXPANDED_NODES} nodes "
                    "(a 'billion laughs' document?)", node.start_mark)
            continue
        if key in size:
            continue
        if key in open_:
            raise yaml.constructor.ConstructorError(None, None, "recursive alias", node.start_mark)
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    return size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, recursive aliases and huge alias expansions."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node)
        return node


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: let the constructor report it
            continue
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
