"""Library errors to one ``continuity: error: ...`` line and their exit code, without click.

Shared by the click command group (``castore.cli.common``) and the click-free fast path
(``castore.cli.fastpath``), so that both print the same bytes and exit with the same code.
Where click is loaded (the group runs), its context is consulted (``--debug``, the open store)
and its own exceptions pass through to ``castore.cli.main``.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from castore.errors import CastoreError, ResourceLimit, is_resource_errno
from castore.textsafe import safe_line

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from typing import Any, TypeVar

    from castore.cli.context import Ctx

    F = TypeVar("F", bound=Callable[..., Any])
else:
    F = Callable  # a plain name at run time (castore/cli/common.py imports it for its annotations)


def echo_err(line: str) -> None:
    """``line`` and a newline on stderr: through click where it is loaded (its stream rules), else plainly."""
    click = sys.modules.get("click")
    if click is not None:
        click.echo(line, err=True)
        return
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(msg: str, code: int) -> None:
    from castore import progress

    progress.finish()
    echo_err(f"continuity: error: {safe_line(msg)}")
    sys.exit(code)


def quiet_broken_pipe() -> None:
    """The reader went away (``continuity ls X | head -1``): stop quietly, exit 141 as a shell's SIGPIPE would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError):
        pass
    sys.exit(141)


def _unproc(name: object) -> object:
    """A /proc/self/fd/N[/rest] alias (the fd is closed by now) reduced to what it still tells: ``rest``."""
    if isinstance(name, str) and name.startswith("/proc/self/fd/"):
        rest = name[len("/proc/self/fd/") :].partition("/")[2]
        return rest or "(an open file)"
    return name


def _click_ctx_obj() -> object:
    """The root ``ctx.obj`` of the running click command (None outside one, or without click)."""
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    return ctx.find_root().obj if ctx is not None else None


def _is_click_control(exc: BaseException) -> bool:
    click = sys.modules.get("click")
    return click is not None and isinstance(exc, (click.exceptions.Exit, click.ClickException, click.Abort))


@contextmanager
def mapped_errors(ctx: Ctx | None = None) -> Iterator[None]:
    """Map library errors raised in the block to one line on stderr and their exit code.

    ``ctx``: the command's context (the fast path); by default the running click command's.
    Entered once around every command (``LazyGroup.invoke``, the fast path): no command
    wraps itself. click's own exceptions pass through to ``main``.
    """
    try:
        yield
    except CastoreError as exc:
        _traceback_if_debug(ctx)
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        quiet_broken_pipe()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            quiet_broken_pipe()
        _traceback_if_debug(ctx)
        where = f"{_unproc(exc.filename)}: " if exc.filename else ""
        obj = ctx if ctx is not None else _click_ctx_obj()
        ro = getattr(obj, "open_store", None)
        if exc.errno == errno.EROFS and ro is not None and ro.readonly:
            fail(
                f"{where}read-only file system: the store at {ro.path} is read-only and this verb writes to "
                "it; run it where the store is writable",
                1,
            )
        code = ResourceLimit.exit_code if is_resource_errno(exc.errno) else 1
        fail(f"{where}{exc.strerror or exc}", code)
    except (MemoryError, RecursionError) as exc:
        fail(f"resource limit: {type(exc).__name__}", ResourceLimit.exit_code)
    except Exception as exc:  # noqa: BLE001 - last line of defence: never a traceback
        if _is_click_control(exc):
            raise
        _traceback_if_debug(ctx)
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)", 1)


def _traceback_if_debug(ctx: Ctx | None = None) -> None:
    obj = ctx if ctx is not None else _click_ctx_obj()
    if os.environ.get("CONTINUITY_DEBUG") or getattr(obj, "debug", False):
        import traceback

        traceback.print_exc()


def handle_errors(fn: F) -> F:
    """``mapped_errors`` around one function (the group applies it to every command already)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with mapped_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
