"""What every `resist` command shares: help options, logging, one-line errors, lazy groups."""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

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


#: Libraries that log SQL parameters, query results, request bodies or headers (so
#: passwords, token digests and keys) at DEBUG or INFO: kept at WARNING whatever -v says.
QUIET_LOGGERS = (
    "aiosqlite", "asyncpg", "sqlalchemy", "alembic.runtime.migration", "httpx", "httpcore",
    "hpack", "h11", "h2", "urllib3", "websockets", "asyncio", "telethon", "multipart",
    "python_multipart",
)  # fmt: skip


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings by default, -v info, -vv debug (of this package only).

    Other libraries log at most INFO, and those in :data:`QUIET_LOGGERS` only
    warnings: at DEBUG they write what they carry (aiosqlite every query's
    parameters and rows), and no verbosity may put a secret on stderr.
    """
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(
        level=max(level, logging.INFO) if verbose else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("resistance").setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class LazyCommand(NamedTuple):
    """Where a lazily loaded command lives, and its one-line help for listings."""

    target: str
    """``"module:attribute"`` of the click command."""
    short_help: str
    """The command's summary (its docstring's first sentence), shown by the group's
    ``--help`` without importing the command; a test keeps the two equal."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported the first time they are used.

    ``lazy_commands`` maps a command name to a :class:`LazyCommand` (or to a bare
    ``"module:attribute"``).  Listing the commands (``resist --help``) shows each
    one's ``short_help`` from the table and imports none of them, so help costs
    what the group's own module costs; running a command imports only that one.
    A bare target has no summary to show, so the listing imports it.
    """

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, LazyCommand | str] | None = None, **kw: Any
    ):
        super().__init__(*args, **kw)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.lazy_commands.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        target = entry.target if isinstance(entry, LazyCommand) else entry
        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's command listing, with the lazy commands' summaries from the table."""
        names = self.list_commands(ctx)
        if not names:
            return
        # Never shortened with "...": write_dl wraps a long summary instead.
        limit = 1000
        rows = []
        for name in names:
            entry = self.lazy_commands.get(name)
            if isinstance(entry, LazyCommand):
                # Shortened to fit exactly as click shortens a command's own help.
                summary = click.Command(name, help=entry.short_help).get_short_help_str(limit)
                rows.append((name, summary))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
