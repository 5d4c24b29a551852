"""User templates for titles and bodies: Jinja2, sandboxed, strict.

Templates come from the configuration, so they are compiled when the configuration is
validated (:func:`check_template`): a syntax error or an unknown filter or test is a config
error naming the key. Rendering uses a :class:`~jinja2.sandbox.SandboxedEnvironment` (no
``__class__``/``__mro__`` walks, bounded ``range``) with :class:`~jinja2.StrictUndefined`, so
a typo fails loudly instead of rendering an empty string; the caller then falls back to the
default message (see :mod:`watcher.notifiers.render`).

Each compile builds its own environment: there is no shared, mutable Jinja state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def compile_template(source: str, *, autoescape: bool = False) -> jinja2.Template:
    """Compile ``source``; raise :class:`ValueError` with a one-line, secret-free problem."""
    environment = _environment(autoescape=autoescape)
    try:
        tree = environment.parse(source)
        # Jinja defers unknown filters and tests inside {% if %} blocks to render time; look
        # for them here so every misspelt name is a config error, not a surprise at 3 a.m.
        for node in tree.find_all((nodes.Filter, nodes.Test)):
            known = environment.filters if isinstance(node, nodes.Filter) else environment.tests
            if node.name not in known:
                what = "filter" if isinstance(node, nodes.Filter) else "test"
                raise ValueError(f"invalid template (line {node.lineno}): no {what} {node.name!r}")
        return environment.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        # TemplateAssertionError (unknown filter or test) is a TemplateSyntaxError too.
        raise ValueError(f"invalid template (line {exc.lineno}): {exc.message}") from None
    except RecursionError:  # Jinja's parser and compiler recurse once per nesting level
        raise ValueError("invalid template: expressions nested too deeply") from None
    except jinja2.TemplateError as exc:
        # Jinja folds constant expressions while compiling, so an unsafe or undefined
        # attribute of a literal (``[].__globals__``) already fails here.
        raise ValueError(f"invalid template: {type(exc).__name__}: {exc.message or ''}") from None
    except ValueError:
        raise  # ours, from the filter and test check above
    except Exception as exc:  # whatever else compiling raises: still the template's problem
        raise ValueError(f"invalid template: {type(exc).__name__}") from None


def check_template(source: str | None) -> str | None:
    """Pydantic validator body: the source unchanged if it compiles."""
    if source is not None:
        compile_template(source)
    return source


class TemplateRenderError(Exception):
    """A template failed while rendering one event (undefined name, sandbox violation, ...)."""


def render_template(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    try:
        return template.render(**context).strip()
    except jinja2.TemplateError as exc:  # includes SecurityError and UndefinedError
        raise TemplateRenderError(f"{type(exc).__name__}: {exc.message or ''}") from None
    except Exception as exc:
        # Whatever a user's template raises (a ZeroDivisionError, a macro calling itself,
        # ``cycler()`` without items...) is that template's failure for this event: the
        # caller falls back to the default message instead of retrying the delivery.
        raise TemplateRenderError(type(exc).__name__) from None
