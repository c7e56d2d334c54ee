"""Sphinx configuration of fastpacket's API reference (docs/).

Build (README.md, "Development"): ``pip install ".[docs]"`` then
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

autodoc imports the *installed* package, so the reference shows the
docstrings and signatures that help() shows, the native (Cython) classes
included; napoleon reads their Google-style sections (Args:, Returns:,
Raises:, Attributes:); MyST reads the Markdown pages (CHANGELOG.md, the wire
format). api.rst has one section per public module; check_coverage.py checks
the built inventory against every public module's __all__.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import List, Optional

from docutils import nodes
from docutils.parsers.rst import Directive

import fastpacket

project = "fastpacket"
author = "the fastpacket developers"
copyright = "fastpacket developers, MIT License"
release = fastpacket.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"fastpacket {release}"

autodoc_default_options = {
    "undoc-members": True,    # constants documented by their value and `#:` comments
    "member-order": "bysource",
    # the native half of a class (NativeLayout, NativeAggregator, ProtocolCore)
    # holds most of its methods: show them, but not what builtins and asyncio give
    "inherited-members": "object,BaseException,Exception,ValueError,BaseProtocol,BufferedProtocol,"
                         "AbstractServer,tuple,dict",
}
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True          # "Attributes:" as fields, not directives that would duplicate autodoc's
napoleon_use_rtype = False
myst_heading_anchors = 3


class ExportsDirective(Directive):
    """``.. fastpacket-exports::``: one line per name of ``fastpacket.__all__``,
    linked to where its area's module documents it (the names are listed from
    the package itself, so the list cannot drift from it)."""

    has_content = False

    def run(self) -> List[nodes.Node]:
        from sphinx import addnodes

        modules = [importlib.import_module(m) for m in PUBLIC_MODULES]
        items = nodes.bullet_list()
        for name in fastpacket.__all__:
            obj = getattr(fastpacket, name)
            target, role = None, "obj"
            if inspect.ismodule(obj):
                target, role = obj.__name__, "mod"
            else:
                for mod in modules:
                    if name in getattr(mod, "__all__", ()) and getattr(mod, name) is obj and mod is not fastpacket:
                        target = f"{mod.__name__}.{name}"
                        break
            if target is None:  # only fastpacket's own names (__version__) have no area module
                target = f"fastpacket.{name}"
            ref = addnodes.pending_xref("", refdomain="py", reftype=role, reftarget=target, refexplicit=True)
            ref += nodes.literal(text=f"fp.{name}")
            para = nodes.paragraph()
            para += ref
            para += nodes.Text(f"  ({target})")
            items += nodes.list_item("", para)
        return [items]


#: Modules documented in api.rst, in its order (check_coverage.py checks the list is complete).
PUBLIC_MODULES = [
    "fastpacket",
    "fastpacket.errors",
    "fastpacket.layout",
    "fastpacket.framing",
    "fastpacket.ring",
    "fastpacket.sendbuf",
    "fastpacket.aggregate",
    "fastpacket.metrics",
    "fastpacket.aio",
    "fastpacket.runtime",
    "fastpacket.system",
    "fastpacket.apps",
    "fastpacket.apps.echo",
    "fastpacket.apps.relay",
    "fastpacket.cli",
    "fastpacket.cli.main",
    "fastpacket.cli.demo",
    "fastpacket.cli.loadgen",
    "fastpacket.cli.report",
    "fastpacket.cli.bench",
]


# The native functions' docstrings start with Cython's embedded signature
# (C types: "send(self, uint64_t type, payload, ...)"), which autodoc takes
# off, and most then give the Python-level one by hand ("send(type, payload,
# *, player_id=0, seq=None) -> int"). That one is the signature shown; it is
# taken out of the text, where reST would read its "*" as emphasis.
_SIGNATURE = re.compile(r"^\s*(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*)\((?P<args>.*)\)\s*(?:->\s*(?P<ret>.+?))?\s*$")


def _handwritten_signature(name: str, doc: Optional[str]) -> Optional[re.Match]:
    """The hand-written signature line of a native docstring, after the
    embedded one, when it names the documented object."""
    lines = (doc or "").splitlines()
    first = _SIGNATURE.match(lines[0]) if lines else None
    if first is None or first.group("name") != name.rsplit(".", 1)[-1]:
        return None  # not a docstring with an embedded signature
    for line in lines[1:]:
        if line.strip():
            m = _SIGNATURE.match(line)
            return m if m and m.group("name") == first.group("name") else None
    return None


def _process_signature(app, what, name, obj, options, signature, return_annotation):
    m = _handwritten_signature(name, getattr(obj, "__doc__", None)) if what in ("function", "method") else None
    if m is None:
        return None
    return f"({m.group('args')})", m.group("ret")


def _process_docstring(app, what, name, obj, options, lines):
    if what not in ("function", "method") or _handwritten_signature(name, getattr(obj, "__doc__", None)) is None:
        return
    while lines and not lines[0].strip():
        del lines[0]
    m = _SIGNATURE.match(lines[0]) if lines else None
    if m and m.group("name") == name.rsplit(".", 1)[-1]:
        del lines[0]


def setup(app):
    app.add_directive("fastpacket-exports", ExportsDirective)
    app.connect("autodoc-process-signature", _process_signature)
    app.connect("autodoc-process-docstring", _process_docstring)
