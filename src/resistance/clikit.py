"""What every `resist` command shares: help options and one-line errors."""

from __future__ import annotations

import functools
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
