"""The `tunelab` app and its entry point: every command group registers itself on `app`; user errors, ours and
the option errors click raises, end as one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer >= 0.26 vendors click

from tunelab.errors import TunelabError

app = typer.Typer(help="The `tunelab` command: each subcommand is a thin shell over the library in `tunelab.api`.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
# Piped output has no terminal width; a wide table beats one with every cell cut short.
console = Console(width=None if sys.stdout.isatty() else 140)


def _fail(message: str) -> None:
    # escape: the message quotes user input (paths, labels) that may hold [brackets] rich reads as markup
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)  # our handlers below, not click's multi-line usage box
    except NoArgsIsHelpError as error:
        typer.echo(error.ctx.get_help())
        sys.exit(2)
    except TunelabError as error:
        _fail(str(error))
    except UsageError as error:  # --epochs abc, a misspelt option or command
        command = error.ctx.command_path if error.ctx is not None else "tunelab"
        _fail(f"{command}: {error.format_message().rstrip('.')} (see `{command} --help`)")
    except ClickException as error:
        _fail(error.format_message())
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted")
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code) returns its code here; success is 0
