"""Command-line options made from dataclass fields (litgpt's args style): a field's name, type and
default become ``--field-name``; its help comes from the field's metadata or from the command's table.

Commands whose options come from torch-importing modules (the training arguments, each task's
settings) are built when first used, so that ``bertforge --help`` stays fast (``Deferred``).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar

import typer
from typer.core import TyperCommand

from ..errors import BertforgeError


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


REQUIRED = inspect.Parameter.empty


def typed(name: str, annotation: Any, default: Any = REQUIRED) -> inspect.Parameter:
    """A parameter whose annotation already says how it is parsed (``Annotated[str, typer.Option(...)]``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def option(
    name: str, kind: Any, default: Any = REQUIRED, help: str | None = None, **settings: Any
) -> inspect.Parameter:
    """One ``--name`` option of type ``kind`` (``param_decls`` for other names); a bool that defaults to
    None or True gets ``--no-name`` too."""
    decls = list(settings.pop("param_decls", None) or [flag(name)])
    if kind in (bool, bool | None) and default is not False:
        decls = [f"{flag(name)}/--no-{name.replace('_', '-')}"]
    return typed(name, Annotated[kind, typer.Option(*decls, help=help, **settings)], default)


def field_options(
    cls: type,
    table: dict[str, tuple[Any, str] | str] | None = None,
    *,
    optional: bool = False,
    key: str = "help",
    bounds: dict[str, dict] | None = None,
) -> list[inspect.Parameter]:
    """Options for the fields of dataclass ``cls``: those in ``table`` (name -> help, or (default, help)),
    else those whose metadata has ``key`` (its help). ``optional``: every default None (given or not)."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        entry = table.get(f.name) if table is not None else f.metadata.get(key)
        if entry is None:
            continue
        default, help = entry if isinstance(entry, tuple) else (f.default, entry)
        kind = hints[f.name]
        if optional:
            default, kind = None, kind | None
        params.append(option(f.name, kind, default, help, **(bounds or {}).get(f.name, {})))
    return params


def settings_options(tasks: Iterable[type], key: str) -> list[inspect.Parameter]:
    """Options for the tasks' own settings whose metadata has ``key``, each once, all defaulting to None."""
    seen: dict[str, inspect.Parameter] = {}
    for task in tasks:
        for p in field_options(task.Settings, key=key, optional=True) if task.Settings else []:
            seen.setdefault(p.name, p)
    return list(seen.values())


def task_settings(task: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """The task settings given on the command line (TaskSpec.extra); one of another task's is an error.
    A task's Settings may adjust what was given (``from_flags``)."""
    from ..tasks import TASKS

    owners: dict[str, list[str]] = {}
    for t in TASKS.values():
        for f in dataclasses.fields(t.Settings) if t.Settings else []:
            owners.setdefault(f.name, []).append(t.name)
    given = {k: v for k, v in values.items() if v is not None}
    for k in given:
        if task is not None and task not in owners[k]:
            raise BertforgeError(f"{flag(k)} is a {' / '.join(owners[k])} option, not for {task}")
    for name in dict.fromkeys(o for k in given for o in owners[k]):
        adjust = getattr(TASKS[name].Settings, "from_flags", None)
        given = adjust(given) if adjust else given
    return given


def build(fn: Callable[..., Any], params: Iterable[inspect.Parameter], doc: str | None) -> Any:
    """``fn(**values)`` as a click command with ``params`` (made by typer, so it parses as the others)."""
    params = list(params)

    def command(**values: Any) -> Any:
        return fn(**values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.__name__ = fn.__name__
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command()(command)
    return typer.main.get_command(app)


class Deferred(TyperCommand):
    """A command registered with a placeholder, whose options and callback ``builders[name]()`` makes
    the first time the command is parsed or its help shown."""

    builders: ClassVar[dict[str, Callable[[], Any]]] = {}

    def __init__(self, name: str | None, **kwargs: Any):
        self._built = None
        super().__init__(name, **kwargs)

    @property
    def built(self) -> Any:
        if self._built is None:
            self._built = self.builders[self.name]()
        return self._built

    @property  # type: ignore[override]
    def params(self) -> list:
        return self.built.params

    @params.setter
    def params(self, value: list) -> None:  # the placeholder's (none)
        pass

    def invoke(self, ctx: Any) -> Any:
        return self.built.invoke(ctx)
