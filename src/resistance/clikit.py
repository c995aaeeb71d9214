"""What every `resist` command shares: help options, logging, one-line errors, lazy groups."""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from resistance.errors import ResistanceError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def one_line_errors(func: F) -> F:
    """Turn the package's own errors into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ResistanceError as exc:
            click.echo(f"resist: error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings by default, -v info, -vv debug."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("resistance").setLevel(max(level, logging.INFO) if verbose else level)


class LazyGroup(click.Group):
    """A group whose subcommands are imported the first time they are used.

    ``lazy_commands`` maps a command name to ``"module:attribute"``.  Listing
    the commands (``resist --help``) imports each one for its one-line help,
    which is what a person asking for help expects to wait for; running one
    command imports only that one.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command
