"""Sphinx configuration of the jaxce documentation (``make docs``).

The build runs with ``-W --keep-going``: every warning fails it. Two checks of our own
join Sphinx's: the Performance page's tables and plots are generated from
``benchmarks/results/*.json`` before the build (``gen_performance.py``), and every
public name (``jaxce.__all__`` and the ``__all__`` of the workflow modules) must be
documented somewhere, else the build warns and so fails.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the jaxce of this tree, installed or not
sys.path.insert(0, str(DOCS))

import gen_performance  # noqa: E402

import jaxce  # noqa: E402

gen_performance.main(ROOT / "benchmarks" / "results", DOCS / "_generated")

project = "jaxce"
author = "the jaxce developers"
copyright = "2026, the jaxce developers"
release = version = jaxce.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/_incoming: raw material from parallel branches, merged by hand; never built.
# docs/_generated is written by gen_performance.py and included, not a page of its own.
exclude_patterns = ["_build", "_generated", "_incoming", "_incoming/**", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# The docstrings are Google style (Args/Returns/Raises/Examples/References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # dataclass Attributes as fields, not duplicate attribute entries
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}

# Doctests: the guides' `testcode`/`testoutput` and `doctest` blocks run under
# `sphinx-build -b doctest`. The `>>>` examples inside docstrings are not run here:
# pytest already runs them (`--doctest-modules` on jaxce/, part of `make test`).
doctest_test_doctest_blocks = ""
# Sphinx's default flags include IGNORE_EXCEPTION_DETAIL; the error guide's messages are
# part of what it documents, so they are compared.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1
doctest_global_setup = """
import jax
import jax.numpy as jnp
import numpy as np
import jaxce
"""

html_theme = "furo"
html_title = f"jaxce {release}"
html_static_path: list[str] = []

# Modules whose __all__ the API reference must cover. jaxce.checkpoint joins the list
# as soon as it exists, so a new public module cannot go undocumented.
WORKFLOW_MODULES = ["jaxce.models", "jaxce.train", "jaxce.evaluation", "jaxce.data", "jaxce.cli"]
OPTIONAL_MODULES = ["jaxce.checkpoint"]


def _public_names() -> list[str]:
    names = [f"jaxce.{n}" for n in jaxce.__all__]
    modules = WORKFLOW_MODULES + [
        m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is not None
    ]
    for module in modules:
        names += [f"{module}.{n}" for n in importlib.import_module(module).__all__]
    return names


def _check_api_coverage(app, env):
    from sphinx.util import logging

    documented = {name for name, *_ in env.get_domain("py").get_objects()}
    missing = [n for n in _public_names() if n not in documented]
    # A name re-exported at the top level counts when documented where it is defined.
    missing = [n for n in missing if not _documented_elsewhere(n, documented)]
    for name in missing:
        logging.getLogger("jaxce.docs").warning(
            "public name %s is not documented: add it to a page under docs/api/", name
        )


def _documented_elsewhere(name: str, documented: set[str]) -> bool:
    module, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(module), attr, None)
    origin = getattr(obj, "__module__", None)
    return origin is not None and f"{origin}.{attr}" in documented


def setup(app):
    app.connect("env-check-consistency", _check_api_coverage)
