"""Public names that load on first use (PEP 562, diffusers' lazy-import pattern): importing a package for its
errors or its config never pays for torch and diffusers."""

import importlib
from typing import Any, Callable


def lazy_names(namespace: dict, public: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `public[name]` (a module path) the first time `name` is read."""

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(public[name]), name)
        namespace[name] = value  # once: later lookups find it without this function
        return value

    return __getattr__
