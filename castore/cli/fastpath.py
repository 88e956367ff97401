"""The click-free fast path of the commonest commands (issue 16 item 1: start-up).

Importing click and building the command group costs more than the whole of a small
``continuity list``. Here, without click:

- ``continuity`` with no argument, ``--help``, ``-h``: the group's help, rendered by click
  when the package was built and kept in ``castore/cli/help_text.py`` (tests/test_fastpath.py
  renders it live and compares; ``scripts/gen-help-text`` writes it again);
- ``list`` with ``--json``, ``-H``/``--human`` and ``--history NAME``, and ``history NAME``
  with ``--json``,
- ``checkout MANIFEST TARGET`` with ``--link MODE`` (click and the command group cost ~25 ms of a
  checkout's start; a second hardlink checkout of 30,000 files takes ~0.8 s),

after the global options ``--store``, ``-q``/``--quiet``, ``-v``/``--verbose`` and ``--debug``.

Anything else (another verb or option, ``--``, a help width other than the one kept,
shell completion, a stream encoding click would re-wrap) returns to the click group,
which does everything. Output, error lines and exit codes are the same bytes on both paths:
the verb's code (``castore.cli.list_view``) and the error mapping (``castore.cli.errmap``) are
shared; tests/test_fastpath.py runs each case both ways.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from castore.cli.context import Ctx

_GLOBAL_FLAGS = {"-q": "quiet", "--quiet": "quiet", "-v": "verbose", "--verbose": "verbose", "--debug": "debug"}
_LIST_FLAGS = {"--json": "as_json", "-H": "human", "--human": "human"}


def _utf8(stream: object) -> bool:
    """Whether click would write to ``stream`` as it is (it re-wraps a stream of an ASCII encoding)."""
    import codecs

    enc = getattr(stream, "encoding", None)
    try:
        return enc is not None and codecs.lookup(enc).name == "utf-8"
    except LookupError:
        return False


def _parse(args: list[str]) -> tuple[str, str | None, dict[str, int], str | None] | None:
    """(verb, --store value, flags, NAME) of a command line the fast path runs, else None."""
    store: str | None = None
    flags: dict[str, int] = {}
    i = 0
    while i < len(args):  # the global options, before the verb
        a = args[i]
        if a == "--store" and i + 1 < len(args):
            store = args[i + 1]
            i += 2
            continue
        if a.startswith("--store="):
            store = a[len("--store=") :]
        elif a in _GLOBAL_FLAGS:
            flags[_GLOBAL_FLAGS[a]] = flags.get(_GLOBAL_FLAGS[a], 0) + 1
        else:
            break
        i += 1
    rest = args[i:]
    if not rest:
        return ("", store, flags, None) if not args else None
    verb, opts = rest[0], rest[1:]
    if verb in ("--help", "-h") and not opts and not args[:i]:
        return "--help", store, flags, None
    if verb == "checkout":
        return _parse_checkout(opts, store, flags)
    if verb not in ("list", "history"):
        return None
    name: str | None = None
    j = 0
    while j < len(opts):
        a = opts[j]
        if a == "--json" or (verb == "list" and a in _LIST_FLAGS):
            flags[_LIST_FLAGS[a]] = 1
        elif verb == "list" and a == "--history" and j + 1 < len(opts):
            name = opts[j + 1]  # (click takes the next word as the value, whatever it is; the last one wins)
            j += 1
        elif verb == "list" and a.startswith("--history="):
            name = a[len("--history=") :]
        elif verb == "history" and name is None and a and not a.startswith("-"):
            name = a
        else:
            return None
        j += 1
    if verb == "history" and name is None:
        return None  # click's usage error
    return verb, store, flags, name


def _parse_checkout(
    opts: list[str], store: str | None, flags: dict[str, int]
) -> tuple[str, str | None, dict[str, int], str | None] | None:
    """``checkout [--link MODE] MANIFEST TARGET`` (MANIFEST and TARGET in ``flags``' place: see run_fast)."""
    from castore.materialize.options import LINK_MODES

    pos: list[str] = []
    link = "auto"
    j = 0
    while j < len(opts):
        a = opts[j]
        if a == "--link" and j + 1 < len(opts):
            link = opts[j + 1]
            j += 1
        elif a.startswith("--link="):
            link = a[len("--link=") :]
        elif a and not a.startswith("-") and len(pos) < 2:
            pos.append(a)
        else:
            return None  # another option, "-", "--", a third argument: click decides
        j += 1
    if len(pos) != 2 or link not in LINK_MODES:
        return None
    _CHECKOUT_ARGS[:] = [*pos, link]
    return "checkout", store, flags, None


_CHECKOUT_ARGS: list[str] = []  # MANIFEST, TARGET, --link of a checkout the fast path runs


def run_fast(args: list[str]) -> None:
    """Run ``args`` (``--store`` hoisted already) and exit, when the fast path covers them; else return."""
    if "_CONTINUITY_COMPLETE" in os.environ or not (_utf8(sys.stdout) and _utf8(sys.stderr)):
        return
    parsed = _parse(args)
    if parsed is None:
        return
    verb, store, flags, name = parsed
    if verb in ("", "--help"):
        _help(missing=verb == "")
        return
    from castore.cli import phases
    from castore.cli.context import Ctx
    from castore.cli.errmap import mapped_errors, quiet_broken_pipe

    phases.mark("cli imports")
    if store is None:
        store = os.environ.get("CONTINUITY_STORE") or None  # as click reads the option's envvar
    ctx = Ctx(store, bool(flags.get("debug")), bool(flags.get("quiet")), flags.get("verbose", 0))
    with mapped_errors(ctx):
        if verb == "checkout":
            _checkout(ctx)
        from castore.cli.list_view import history_text, list_text

        if ctx.debug:
            phases.mark("command module")
            phases.enable()
        as_json = bool(flags.get("as_json"))
        if verb == "history":
            assert name is not None
            out = history_text(ctx, name, as_json=as_json)
        else:
            out = list_text(ctx, as_json, bool(flags.get("human")), name)
        try:
            sys.stdout.write(out)
            sys.stdout.flush()
        except BrokenPipeError:
            quiet_broken_pipe()
    sys.exit(0)


def _checkout(ctx: Ctx) -> None:
    """Run the checkout _parse_checkout took (inside mapped_errors) and exit 0: as the click command,
    with the group's progress bar on a terminal."""
    from castore.cli import phases
    from castore.cli.checkout_run import run_checkout

    if ctx.debug:
        phases.mark("command module")
        phases.enable()
    if not ctx.quiet and sys.stderr.isatty():
        from castore.cli.progress_view import install_if_terminal

        install_if_terminal(False)
    manifest, target, link = _CHECKOUT_ARGS
    run_checkout(ctx, manifest, target, link=link)
    sys.exit(0)


def _help(*, missing: bool) -> None:
    """The group's help (stdout, exit 0), or with no command: on stderr, then the error line (exit 2)."""
    from castore.cli import _terminal_width
    from castore.cli.help_text import HELP, WIDTH

    if _terminal_width() != WIDTH:
        return  # click renders it for this width
    if not missing:
        try:
            sys.stdout.write(HELP + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # as click's main: silence the streams, exit 1
            _silence_stdout()
            sys.exit(1)
        sys.exit(0)
    from castore.cli.errmap import fail

    sys.stderr.write(HELP + "\n")
    fail("missing command (see the list above)", 2)


def _silence_stdout() -> None:
    """The interpreter's final flush of a stdout whose reader went away must not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
