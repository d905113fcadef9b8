"""Reading a job or preset file a user wrote: YAML, refused with one line for what PyYAML accepts or hides.

`yaml.safe_load` lets a repeated key silently replace the first (a second `generation:` section wins),
expands an alias bomb that the error path then prints, and reports bad syntax and bad encodings as raw
exceptions. Here each is an EchoVideoInputError naming the file, line and column.
"""

from pathlib import Path

import yaml

from echovideo.errors import EchoVideoInputError

MAX_FILE_BYTES = 1 * 2**20  # a job file is a page of settings
MAX_NODES = 10_000  # values after alias expansion; a real job file has a few hundred


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _Refused(f"line {key_node.start_mark.line + 1}: key {str(key)[:60]!r} is given twice (first "
                               f"at line {seen[key] + 1})", "keep one; the second would silently replace the first")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


class _Refused(Exception):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values the document holds once every alias is expanded (memoised per node: linear in the file)."""
    if id(node) not in sizes:
        sizes[id(node)] = 0  # a node that (through aliases) contains itself counts once
        children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = min(1 + sum(_expanded_size(child, sizes) for child in children), MAX_NODES + 1)
    return sizes[id(node)]


def read_yaml_file(path: str | Path, field: str, example: str):
    """A YAML file's content ({} when empty); anything but a plain, readable settings file is an input error
    naming `field`, the file, and where in it."""
    path = Path(path)
    if not path.is_file():
        raise EchoVideoInputError(field, f"{path} does not exist", f"pass e.g. {example}")
    data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise EchoVideoInputError(field, f"{path} is {len(data) // 1024} KB, not a settings file", "check the path")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise EchoVideoInputError(field, f"{path} line {line}: byte {data[exc.start]:#04x} is not UTF-8",
                                  "save the file as UTF-8") from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        if _expanded_size(node, {}) > MAX_NODES:
            raise _Refused(f"expands to over {MAX_NODES} values through aliases", "write the values out")
        return loader.construct_document(node) or {}
    except _Refused as exc:
        raise EchoVideoInputError(field, f"{path}: {exc.problem}", exc.fix) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EchoVideoInputError(field, f"{path}{where}: {exc.problem or exc.context} (not valid YAML)",
                                  "fix the file's syntax") from None
    except yaml.YAMLError as exc:
        raise EchoVideoInputError(field, f"{path} is not valid YAML ({str(exc)[:200]})", "fix the file's syntax") from None
    finally:
        loader.dispose()
