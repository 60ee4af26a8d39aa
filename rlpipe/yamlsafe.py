"""Reading pipeline files: safe YAML with bounds, so hostile or mistaken input fails fast with a named error.

PyYAML's ``safe_load`` builds no arbitrary objects but still lets input cost unbounded time and memory, and
it follows YAML 1.1 where users expect otherwise. This loader adds:

- a file size bound (``MAX_BYTES``) and UTF-8 only; directories, devices and symlink loops are refused;
- aliases are counted as what they expand to: at most ``MAX_NODES`` values and ``MAX_CHARS`` characters per
  document. Each alias adds its anchor's (memoized) expanded size, so a "billion laughs" stops after a few
  hundred bytes of parsing, before any object is built; a recursive alias is refused;
- at most ``MAX_DEPTH`` levels of nesting (PyYAML's composer recurses per level);
- a key given twice in one mapping is an error naming both lines (PyYAML keeps the last one silently);
- ``3e-4`` and ``1e6`` are floats (YAML 1.1 needs a dot and a signed exponent, so PyYAML reads them as text).

:func:`check_tree` applies the same size and depth bounds to data that arrives already parsed (JSON input).
"""

from __future__ import annotations

import errno
import json
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 256 * 1024  # also Step Functions' limit for an execution input; pipeline files are a few KB
MAX_DEPTH = 32  # the deepest shipped setting (policy_kwargs.net_arch.pi[0]) sits at level 8
MAX_NODES = 20_000  # values after alias expansion: a 100-session pipeline with every setting spelled out
MAX_CHARS = 4 * MAX_BYTES  # scalar characters after alias expansion

_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class InputError(ValueError):
    """Input refused before validation. ``where`` is the key path of the problem ('' for the whole input)."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


def _join(path: list[str]) -> str:
    out = ""
    for part in path:
        out += part if part.startswith("[") or not out else "." + part
    return out


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds expansion and depth and refuses duplicate keys while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) once expanded
        self._nodes = 0
        self._chars = 0
        self._aliases = 0

    def _where(self) -> str:
        return _join([p for p in self._path if p])

    def _grow(self, nodes: int, chars: int, mark: Any) -> None:
        self._nodes += nodes
        self._chars += chars
        if self._nodes > MAX_NODES or self._chars > MAX_CHARS:
            what = f"{MAX_NODES:,} values" if self._nodes > MAX_NODES else f"{MAX_CHARS:,} characters"
            why = ("aliases (*name) repeat what their anchor holds; use fewer aliases" if self._aliases else
                   "a pipeline holds a few hundred")
            raise InputError(self._where(), f"holds more than {what} (line {mark.line + 1}); {why}")

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # the anchored collection is still being composed: it contains itself
                raise InputError(self._where(), f"recursive alias at line {mark.line + 1}: an anchor cannot "
                                 "contain an alias of itself")
            self._aliases += 1
            self._grow(*size, mark)
            return node
        if isinstance(parent, SequenceNode):
            label = f"[{index}]"
        elif isinstance(parent, MappingNode) and isinstance(index, ScalarNode):
            label = str(index.value)
        else:
            label = ""  # the document root, or a mapping key
        self._path.append(label)
        if len(self._path) > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise InputError(self._where(), f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})")
        before = (self._nodes, self._chars)
        node = super().compose_node(parent, index)
        self._grow(1, len(node.value) if isinstance(node, ScalarNode) else 0, node.start_mark)
        self._sizes[id(node)] = (self._nodes - before[0], self._chars - before[1])
        self._path.pop()
        return node

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 (PyYAML's name)
        # Checked in the scanner too: before deciding on a '[' it looks up to 1024 characters ahead for a
        # possible key, at a cost that grows with the number of open brackets.
        if self.flow_level >= MAX_DEPTH:
            mark = self.get_mark()
            raise InputError(self._where(), f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1}, "
                             f"column {mark.column + 1})")
        super().fetch_flow_collection_start(TokenClass)

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges are meant to be overridden; complex keys fail in the constructor
            key = self.construct_object(key_node)
            if key in seen:
                a, b = seen[key].start_mark, key_node.start_mark
                lines = f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line else \
                    f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
                where = _join([p for p in self._path if p] + [str(key)])
                raise InputError(where, f"duplicate key ({lines}); a key may appear once per mapping: keep one")
            seen[key] = key_node
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except InputError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:  # int("1" * 5000), !!float abc
            why = "a number of more than 4,300 digits" if "digits" in str(exc) else str(exc)
            raise InputError("", f"cannot read the value at line {node.start_mark.line + 1}, column "
                             f"{node.start_mark.column + 1}: {why}") from None


def _as_text(loader: _BoundedLoader, node: Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


def _refuse(loader: _BoundedLoader, node: Node) -> Any:
    raise InputError("", f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} (line {node.start_mark.line + 1}) "
                     "has no JSON form; a pipeline holds mappings, lists, strings, numbers, booleans and null")


_BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+.0123456789"))
# The resolved pipeline is JSON (uploaded, fingerprinted): dates stay text, and types JSON lacks are refused.
_BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", _as_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line: PyYAML's own messages span several lines with a snippet of the input."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"not valid YAML: {'; '.join(parts)}{where}"
    return "not valid YAML: " + " ".join(str(exc).split())


def decode(data: bytes) -> str:
    """``data`` as text: UTF-8 (a leading byte-order mark is dropped) within ``MAX_BYTES``."""
    if len(data) > MAX_BYTES:
        raise InputError("", f"larger than {MAX_BYTES // 1024} KiB; a pipeline file is a few KB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError("", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); save the file "
                         "as UTF-8") from None


class _DuplicateJsonKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateJsonKey  # the YAML pass below names the lines
    return out


def _loads_json(text: str) -> Any:
    """JSON parsed by the C parser (the resolved pipelines rlpipe uploads are JSON), or None if not JSON."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except (ValueError, _DuplicateJsonKey):
        return None  # not JSON, a duplicate key or a number too long: the YAML pass names the line
    except RecursionError:
        raise InputError("", f"nested more than {MAX_DEPTH} levels deep") from None
    check_tree(data)
    return data


def loads(text: str | bytes) -> Any:
    """Parse one YAML (or JSON) document within the bounds above. Raises :class:`InputError`."""
    if isinstance(text, bytes):
        text = decode(text)
    elif len(text) > MAX_BYTES:
        raise InputError("", f"larger than {MAX_BYTES // 1024} KiB ({len(text):,} characters)")
    if text.lstrip().startswith("{"):
        data = _loads_json(text)
        if data is not None:
            return data
    try:
        loader = _BoundedLoader(text)  # the reader already refuses control characters here
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise InputError("", _describe_yaml_error(exc)) from None


def read_text(path: Path) -> str:
    """The text of a regular UTF-8 file of at most ``MAX_BYTES``. Raises :class:`InputError` naming the path."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise InputError("", f"{path} is a directory; give a YAML file")
        if not stat.S_ISREG(info.st_mode):
            raise InputError("", f"{path} is not a regular file; give a YAML file")
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)  # not more, even if the file grew since stat
    except FileNotFoundError:
        raise InputError("", f"file not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError("", f"{path} is a symlink loop (a link that leads back to itself); point it at a "
                             "file") from None
        raise InputError("", f"cannot read {path}: {exc.strerror or exc}") from None
    return decode(data)


def load_file(path: Path) -> Any:
    """Read and parse a YAML file within the bounds above. Raises :class:`InputError`."""
    return loads(read_text(path))


def check_tree(data: Any) -> None:
    """Apply the loader's bounds to already parsed data (nesting depth, values after expanding shared objects).

    Objects reached twice count each time (as aliases do), but are walked once; a cycle is refused.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    path: list[str] = []

    def walk(node: Any, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InputError(_join(path), "contains itself (a cycle)")
        if depth > MAX_DEPTH:
            raise InputError(_join(path), f"nested more than {MAX_DEPTH} levels deep")
        active.add(key)
        total = 1
        items = node.items() if isinstance(node, dict) else ((f"[{i}]", v) for i, v in enumerate(node))
        for label, value in items:
            path.append(str(label))
            total += walk(value, depth + 1)
            if total > MAX_NODES:
                raise InputError(_join(path[:-1]), f"expands to more than {MAX_NODES:,} values")
            path.pop()
        active.discard(key)
        sizes[key] = total
        return total

    walk(data, 1)
