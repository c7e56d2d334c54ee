"""_native.pyi describes fastpacket._native as it is: the same public names,
the same members of every class, and for every function and method the
same parameters (names, kinds, whether they have a default, and the
default itself where the stub spells one out).

Constructors implemented in __cinit__ show no signature at runtime; for
them the signature on the first line of the class docstring (what help()
shows) is checked against the stub instead.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import sys
import types
from typing import Dict, List, Optional, Tuple

import pytest

import fastpacket
from fastpacket import _native

STUB = pathlib.Path(fastpacket.__file__).with_name("_native.pyi")
NATIVE = "fastpacket._native"

# (name, kind, has_default, default or ...)
Param = Tuple[str, str, bool, object]


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def _stub_names(tree: ast.Module) -> Tuple[Dict[str, ast.AST], set]:
    """Module-level names the stub declares, and its type-only aliases."""
    names: Dict[str, ast.AST] = {}
    aliases = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            aliases.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names, aliases


def _runtime_public_names() -> set:
    out = set()
    for name, value in vars(_native).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", NATIVE) != NATIVE and (inspect.isclass(value) or callable(value)):
            continue  # imported (the exception classes of fastpacket.errors)
        out.add(name)
    return out


def _value(node: Optional[ast.expr]) -> object:
    """A stub default as a value; ... where the stub does not spell it out."""
    if node is None or (isinstance(node, ast.Constant) and node.value is Ellipsis):
        return ...
    try:
        return eval(compile(ast.Expression(node), "<stub>", "eval"), {"__builtins__": {}})  # constants only
    except NameError:
        return ...


def _params_of_ast(fn: ast.FunctionDef) -> List[Param]:
    a = fn.args
    out: List[Param] = []
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, d) in enumerate(zip(positional, defaults)):
        kind = "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        out.append((arg.arg, kind, d is not None, _value(d)))
    if a.vararg is not None:
        out.append((a.vararg.arg, "VAR_POSITIONAL", False, ...))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", d is not None, _value(d)))
    if a.kwarg is not None:
        out.append((a.kwarg.arg, "VAR_KEYWORD", False, ...))
    return [p for p in out if p[0] not in ("self", "cls")]


def _params_of_runtime(obj: object) -> Optional[List[Param]]:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    params = [(p.name, p.kind.name, p.default is not p.empty, p.default) for p in sig.parameters.values()]
    params = [p for p in params if p[0] not in ("self", "cls")]
    if [p[1] for p in params] == ["VAR_POSITIONAL", "VAR_KEYWORD"]:
        return None  # object's slot wrapper: nothing to compare
    return params


def _split_params(text: str) -> List[str]:
    """The parameters of a signature's text, split at top-level commas."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def _params_of_docstring(cls: type) -> Optional[List[Param]]:
    """The constructor signature Cython (or the author, for a __cinit__)
    put on the first line of the class docstring, C types dropped."""
    first = cls.__doc__.lstrip().splitlines()[0] if cls.__doc__ else ""
    if not (first.startswith(cls.__name__ + "(") and first.endswith(")")):
        return None
    out: List[Param] = []
    kind = "POSITIONAL_OR_KEYWORD"
    for part in _split_params(first[len(cls.__name__) + 1:-1]):
        if part == "*":
            kind = "KEYWORD_ONLY"
            continue
        if part == "/":
            out = [(n, "POSITIONAL_ONLY", d, v) for n, _, d, v in out]
            continue
        if part.startswith("**"):
            out.append((part[2:], "VAR_KEYWORD", False, ...))
            continue
        if part.startswith("*"):
            out.append((part[1:], "VAR_POSITIONAL", False, ...))
            kind = "KEYWORD_ONLY"
            continue
        head, _, default = part.partition("=")
        out.append((head.split()[-1], kind, bool(default), ...))  # "uint64_t ns_per_unit" -> ns_per_unit
    return [p for p in out if p[0] not in ("self", "cls")]


def _same(stub: List[Param], runtime: List[Param]) -> bool:
    """Equal parameter lists. The stub may make a parameter positional-only
    where Cython reports positional-or-keyword (a METH_O method, such as
    Metric.record, refuses keywords but reports a plain parameter); names of
    positional-only parameters do not matter."""
    if len(stub) != len(runtime):
        return False
    for s, r in zip(stub, runtime):
        if s[1] == "POSITIONAL_ONLY" and r[1] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD"):
            if s[2] != r[2]:
                return False
        elif s[:3] != r[:3]:
            return False
        if not (s[3] is ... or r[3] is ... or s[3] == r[3]):
            return False
    return True


def _members(node: ast.ClassDef) -> Dict[str, List[ast.AST]]:
    out: Dict[str, List[ast.AST]] = {}
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.setdefault(item.name, []).append(item)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            out.setdefault(item.target.id, []).append(item)
    return out


def _is_overload_or_property(fn: ast.AST) -> bool:
    decorators = getattr(fn, "decorator_list", [])
    names = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in decorators}
    return bool(names & {"overload", "property", "setter"})


def test_module_names_match():
    names, aliases = _stub_names(_stub_tree())
    runtime = _runtime_public_names()
    assert sorted(runtime - set(names)) == [], "public in fastpacket._native but missing from _native.pyi"
    missing = sorted(n for n in names if not hasattr(_native, n))
    assert missing == [], "declared in _native.pyi but not in fastpacket._native"
    assert not aliases & runtime, "a stub-only alias shadows a runtime name"


def _stub_classes():
    names, _ = _stub_names(_stub_tree())
    return [(n, node) for n, node in names.items() if isinstance(node, ast.ClassDef)]


@pytest.mark.parametrize("name, node", _stub_classes(), ids=[n for n, _ in _stub_classes()])
def test_class_members_and_signatures_match(name, node):
    cls = getattr(_native, name)
    members = _members(node)
    public = {k for k in vars(cls) if not k.startswith("_")}
    assert sorted(public - set(members)) == [], f"{name}: public at runtime, missing from the stub"
    # PEP 688: a type exporting buffers shows __buffer__/__release_buffer__ from Python 3.12 on
    pep688 = set() if sys.version_info >= (3, 12) else {"__buffer__", "__release_buffer__"}
    assert sorted(m for m in members if not hasattr(cls, m) and m not in pep688) == [], \
        f"{name}: in the stub, not at runtime"
    for member, defs in members.items():
        fn = defs[0]
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or _is_overload_or_property(fn):
            continue
        if not hasattr(cls, member):
            continue  # one of pep688 before 3.12
        stub = _params_of_ast(fn)  # type: ignore[arg-type]
        runtime = _params_of_runtime(getattr(cls, member))
        if runtime is None and member == "__init__":
            runtime = _params_of_docstring(cls)  # __cinit__: the documented signature
            assert runtime is not None, f"{name}: no inspectable constructor and no signature in its docstring"
        if runtime is None:
            continue  # a slot wrapper (__len__, __eq__, ...): nothing to compare
        assert _same(stub, runtime), f"{name}.{member}: stub {stub} != runtime {runtime}"


def test_function_signatures_match():
    names, _ = _stub_names(_stub_tree())
    checked = 0
    for name, node in names.items():
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        runtime = _params_of_runtime(getattr(_native, name))
        assert runtime is not None, f"{name}: no signature at runtime"
        stub = _params_of_ast(node)  # type: ignore[arg-type]
        assert _same(stub, runtime), f"{name}: stub {stub} != runtime {runtime}"
        checked += 1
    assert checked >= 5
