"""User templates for titles and bodies: Jinja2, sandboxed, strict, bounded.

Templates come from the configuration, so they are compiled when the configuration is
validated (:func:`check_template`): a syntax error or an unknown filter or test is a config
error naming the key. Rendering uses a :class:`~jinja2.sandbox.SandboxedEnvironment` (no
``__class__``/``__mro__`` walks, bounded ``range``) with :class:`~jinja2.StrictUndefined`, so
a typo fails loudly instead of rendering an empty string; the caller then falls back to the
default message (see :mod:`watcher.notifiers.render`).

Bounded, because a template is a program: ``{{ 'a' * 300000000 }}`` used to cost 1.2 GB
while the configuration was loaded (Jinja folds constant expressions at compile time).
Every value a template builds is checked *before* it is built, by its size (characters,
or items for lists and mappings, counted with a bounded walk so shared references cannot
fool it):

- the arithmetic operators ``*``, ``**``, ``+`` and ``%`` are intercepted (the sandbox's
  ``intercepted_binops``; intercepted operators are never folded at compile time); a
  constant expression over the limit is a config error, any other one fails the render;
- ``~`` concatenation, ``str.format`` and ``%`` field widths, filters and methods of text,
  lists and mappings (their inputs times their arguments, and what they return, lazily for
  iterators), and the text of each ``{{ }}`` output are checked the same way;
- the rendered output (and any block or macro output inside it) is cut off past
  :data:`MAX_OUTPUT` characters: the render fails and the caller falls back.

Bounded in time too, because a render runs on the event loop: the sandbox bounds ``range``
to 100,000 items, but nested loops (``range(100000)`` inside ``range(100000)``) or a macro
that calls itself twice per level run for hours on few bytes of output. Every loop
iteration and every call (macros, methods, ``loop(...)`` of a recursive loop) is a *step*:
a render may take at most :data:`MAX_STEPS` steps and :data:`MAX_RENDER_SECONDS` of wall
time (checked at each step; a single step is bounded by the size limits above), else it
fails like any other render error and the caller falls back to the default message. Why not
a worker thread with a timeout: a Python thread cannot be stopped, so a runaway template
would keep spinning (and holding the GIL) after its caller gave up on it.

Each compile builds its own environment: there is no shared, mutable Jinja state.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined
from jinja2.sandbox import SandboxedEnvironment

#: Characters of a rendered template, and characters (or items) of any value it builds.
MAX_OUTPUT = 100_000
#: Size of a filter's or method's input times its largest argument: what it may amplify.
MAX_WORK = 100 * MAX_OUTPUT
#: Bits of an integer built by ``*`` or ``**``.
MAX_INT_BITS = 4096
#: Loop iterations plus calls in one render (a notification template needs a few hundred).
MAX_STEPS = 100_000
#: Wall time of one render; a template needs well under a millisecond.
MAX_RENDER_SECONDS = 0.25

_WIDTHS = re.compile(r"\d+")
_FORMATTER = string.Formatter()
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?([-#0 +]*)(\*|\d*)(?:\.(\*|\d*))?[a-zA-Z%]")


class TemplateLimitError(SecurityError):
    """A template tried to build a value or output over the limits."""


class _Budget:
    """What one render may still spend: steps left and a deadline (monotonic)."""

    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateLimitError(f"more than {MAX_STEPS:,} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took more than {MAX_RENDER_SECONDS:g} s")


# The running render's budget. A context variable rather than an attribute of the compiled
# template: the same template may be rendered by several tasks or threads at once, and each
# render gets its own budget (set by :func:`render_template`, reset when it returns).
_BUDGET: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step()


def _size(value: Any, budget: int = MAX_WORK) -> int:
    """Characters or items in ``value``, nested values included; stops counting past
    ``budget`` (returns ``budget + 1``), so shared references cost at most that much work."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Mapping):
            total += 1
            stack.extend(itertools.chain.from_iterable(item.items()))
        elif isinstance(item, list | tuple | set | frozenset):
            total += 1
            stack.extend(item)
        elif isinstance(item, Sized) and not isinstance(item, Undefined):
            total += len(item)  # range, and other containers the sandbox hands out
        else:
            total += 1
        if total > budget:
            return budget + 1
    return total


def _refuse_if(condition: bool, what: str) -> None:
    if condition:
        raise TemplateLimitError(f"{what} would exceed the template limit ({MAX_OUTPUT:,})")


def _check_percent_format(fmt: str) -> None:
    for match in _PERCENT_SPEC.finditer(fmt):
        for width in match.groups()[1:]:
            _refuse_if(width == "*" or (bool(width) and int(width) > MAX_OUTPUT), "a % width")


def _check_format_spec(fmt: str) -> None:
    try:
        fields = list(_FORMATTER.parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, _, spec, _ in fields:
        if spec:
            _refuse_if("{" in spec, "a nested format spec")
            _refuse_if(any(int(w) > MAX_OUTPUT for w in _WIDTHS.findall(spec)), "a format width")


def bounded_binop(operator: str, left: Any, right: Any) -> Any:
    """``left <operator> right`` for the intercepted operators, refused when too big."""
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(count, int) and not isinstance(seq, int | float):
                _refuse_if(_size(seq) * max(count, 0) > MAX_OUTPUT, "'*'")
        if isinstance(left, int) and isinstance(right, int):
            _refuse_if(left.bit_length() + right.bit_length() > MAX_INT_BITS, "'*'")
        return left * right
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _refuse_if(right * left.bit_length() > MAX_INT_BITS, "'**'")
        return left**right
    if operator == "+":
        if not isinstance(left, int | float) and not isinstance(right, int | float):
            _refuse_if(_size(left) + _size(right) > MAX_OUTPUT, "'+'")
        return left + right
    if operator == "%":
        if isinstance(left, str):
            _check_percent_format(left)
            _refuse_if(_size(left) + _size(right) > MAX_OUTPUT, "'%'")
        result = left % right
        _refuse_if(isinstance(result, str) and len(result) > MAX_OUTPUT, "'%'")
        return result
    raise SecurityError(f"operator {operator!r} is not intercepted")  # pragma: no cover


def _check_amplification(what: str, value: Any, args: Iterable[Any]) -> None:
    """Refuse when ``value``'s size times its largest argument could build too much."""
    if isinstance(value, Undefined):
        return  # ``default`` and friends must see it untouched
    factor = 1
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool):
            _refuse_if(arg > MAX_OUTPUT, f"an argument of {what}")
            factor = max(factor, arg)
        elif not isinstance(arg, Undefined):
            factor = max(factor, _size(arg))
    _refuse_if(_size(value) * factor > MAX_WORK, what)


def _bounded_iter(items: Iterator[Any], what: str) -> Iterator[Any]:
    total = 0
    for item in items:
        total += _size(item)
        _refuse_if(total > MAX_WORK, what)
        yield item


def _check_result(result: Any, what: str) -> Any:
    if isinstance(result, Iterator):
        return _bounded_iter(result, what)
    _refuse_if(_size(result) > MAX_WORK, what)
    return result


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with its input, arguments and result checked (keeps Jinja's pass_* marks)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Jinja passes the context, eval context or environment first when the filter asks.
        skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
        value, rest = (args[skip], args[skip + 1 :]) if len(args) > skip else (None, ())
        if name == "format" and isinstance(value, str):
            _check_percent_format(value)
        _check_amplification(f"filter {name!r}", value, [*rest, *kwargs.values()])
        return _check_result(func(*args, **kwargs), f"filter {name!r}")

    return wrapper


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with ``~`` concatenation checked before it joins and every
    ``for`` loop's iterable counted a step per item."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        counted = nodes.EnvironmentAttribute("counted_steps", lineno=node.lineno)
        if not (isinstance(node.iter, nodes.Call) and node.iter.node == counted):
            node.iter = nodes.Call(counted, [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.check_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(SandboxedEnvironment):
    intercepted_binops = frozenset(("*", "**", "+", "%"))
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs: nothing to notify

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return bounded_binop(operator, left, right)

    @staticmethod
    def _finalize(value: Any) -> Any:
        """Every ``{{ }}`` output, before Jinja turns it into text."""
        _refuse_if(_size(value, MAX_OUTPUT) > MAX_OUTPUT, "an output")
        return value

    @staticmethod
    def check_concat(joined: str) -> str:
        # Each operand was checked when it was built, so ``joined`` is at most a few times
        # the limit: checking the result bounds a chain (``s ~ s`` in a recursive macro).
        _refuse_if(len(joined) > MAX_OUTPUT, "'~'")
        return joined

    def concat(self, parts: Iterable[str]) -> str:
        """Joins the rendered output (and block, macro and ``set`` block bodies) with a cap."""
        out: list[str] = []
        total = 0
        for part in parts:
            total += len(part)
            _refuse_if(total > MAX_OUTPUT, "the rendered output")
            out.append(part)
        return "".join(out)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_spec(fmt)
            _check_amplification("str.format", fmt, [*args, *kwargs.values()])
            result = wrapped(*args, **kwargs)
            _refuse_if(len(result) > MAX_OUTPUT, "str.format")
            return result

        return checked

    @staticmethod
    def counted_steps(items: Iterable[Any]) -> Iterator[Any]:
        """A ``for`` loop's items, one step each (see :class:`_Budget`)."""
        for item in items:
            _step()
            yield item

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes | list | tuple | dict | set):
            what = f"method {getattr(__obj, '__name__', 'call')!r}"
            _check_amplification(what, owner, [*args, *kwargs.values()])
            return _check_result(super().call(__context, __obj, *args, **kwargs), what)
        return _check_result(super().call(__context, __obj, *args, **kwargs), "a call")


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    return _BoundedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _constant(node: nodes.Expr, eval_ctx: nodes.EvalContext) -> Any:
    """``node``'s value if it is constant, with intercepted operators evaluated bounded;
    raises :class:`jinja2.nodes.Impossible` otherwise."""
    if isinstance(node, nodes.BinExpr) and node.operator in _BoundedEnvironment.intercepted_binops:
        left = _constant(node.left, eval_ctx)
        right = _constant(node.right, eval_ctx)
        try:
            return bounded_binop(node.operator, left, right)
        except TemplateLimitError:
            raise
        except Exception:
            raise nodes.Impossible() from None
    return node.as_const(eval_ctx)


def _check_constant_arithmetic(tree: nodes.Template, environment: SandboxedEnvironment) -> None:
    """Constant arithmetic over the limits is a config error (``{{ 'a' * 300000000 }}``)."""
    eval_ctx = nodes.EvalContext(environment)
    for node in tree.find_all(nodes.BinExpr):
        try:
            _constant(node, eval_ctx)
        except nodes.Impossible:
            continue
        except TemplateLimitError as exc:
            raise ValueError(f"invalid template (line {node.lineno}): {exc}") from None


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
        _check_constant_arithmetic(tree, environment)
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
    """``template`` rendered for one event, within the step and time budget."""
    token = _BUDGET.set(_Budget())
    try:
        return template.render(**context).strip()
    except jinja2.TemplateError as exc:  # includes SecurityError and UndefinedError
        raise TemplateRenderError(f"{type(exc).__name__}: {exc.message or ''}") from None
    except Exception as exc:
        # Whatever a user's template raises (a ZeroDivisionError, a macro calling itself,
        # ``cycler()`` without items...) is that template's failure for this event: the
        # caller falls back to the default message instead of retrying the delivery.
        raise TemplateRenderError(type(exc).__name__) from None
    finally:
        _BUDGET.reset(token)
