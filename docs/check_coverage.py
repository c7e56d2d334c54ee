"""Checks that the built API reference documents every public name.

    python docs/check_coverage.py BUILD/objects.inv

Public: every module of the installed package whose dotted name has no part
starting with "_" (NOT_API aside), and every name in its __all__. A name counts as documented when the
inventory holds it under that module, or holds the same object under
another public module (a re-export documented where its area lives). A
public module without __all__, or missing from the reference, fails too, so
a module added to the package must be added to docs/api.rst.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import zlib
from typing import Dict, List, Set

import fastpacket

#: Modules left out, and where they are documented instead.
NOT_API = {
    "fastpacket.examples": "scripts run with python -m, shown in README.md",
    "fastpacket.cli.bench.": "the sections of `fastpacket bench`: its table and README.md's Benchmarks",
}


PLAIN_VALUES = (int, float, complex, str, bytes, tuple, frozenset, type(None))


def inventory_names(path: str) -> Dict[str, str]:
    """Python objects of a Sphinx objects.inv (version 2): name -> role."""
    with open(path, "rb") as f:
        header = [f.readline() for _ in range(4)]
        if not header[0].startswith(b"# Sphinx inventory version 2"):
            raise SystemExit(f"{path}: not a version 2 Sphinx inventory: {header[0]!r}")
        body = zlib.decompress(f.read()).decode("utf-8")
    names = {}
    for line in body.splitlines():
        name, _, rest = line.partition(" ")
        role = rest.split(" ", 1)[0]
        if role.startswith("py:"):
            names[name] = role[3:]
    return names


def public_modules() -> List[str]:
    """fastpacket and its public modules, in import-name order."""
    found = ["fastpacket"]
    for info in pkgutil.walk_packages(fastpacket.__path__, "fastpacket."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name.startswith(tuple(NOT_API)):
            continue
        found.append(info.name)
    return sorted(found)


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    documented = inventory_names(argv[1])
    modules = {name: importlib.import_module(name) for name in public_modules()}
    problems = []
    # id(object) -> the names it is documented under
    where: Dict[int, Set[str]] = {}
    for mname, mod in modules.items():
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            # identity means "the same thing" only for objects that are not plain values
            # (two modules' 1 or "x" may be one object by accident)
            if f"{mname}.{name}" in documented and not isinstance(obj, PLAIN_VALUES):
                where.setdefault(id(obj), set()).add(f"{mname}.{name}")
    count = 0
    for mname, mod in modules.items():
        if documented.get(mname) != "module":
            problems.append(f"module {mname} is not in the reference (add it to docs/api.rst)")
        names = getattr(mod, "__all__", None)
        if names is None:
            problems.append(f"module {mname} has no __all__: its public names are undefined")
            continue
        for name in names:
            count += 1
            if f"{mname}.{name}" in documented or id(getattr(mod, name)) in where:
                continue
            problems.append(f"{mname}.{name} (in {mname}.__all__) is not documented")
    for p in problems:
        print("docs coverage:", p, file=sys.stderr)
    if problems:
        return 1
    print(f"docs coverage: all {count} names of the __all__ of {len(modules)} public modules are documented")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
