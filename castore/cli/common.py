"""Shared CLI plumbing: the group, error mapping, manifest references."""

from __future__ import annotations

import errno
import functools
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from castore.errors import (
    CastoreError,
    CorruptManifest,
    NoStore,
    NotFound,
    ResourceLimit,
    UnsafeInput,
    is_resource_errno,
)
from castore.textsafe import json_text, safe_line

if TYPE_CHECKING:  # imported where used: `--help` needs neither the store nor the manifest code
    from castore.manifest import Manifest
    from castore.store import Store

F = TypeVar("F", bound=Callable[..., Any])

ignore_opt = click.option(
    "--ignore",
    "ignore",
    multiple=True,
    metavar="GLOB",
    help="Leave out entries matching GLOB (name, or path from the root). Repeatable.",
)
MAX_MANIFEST_FILE = 1 << 31

json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as one JSON document (keys: docs/json.md)."
)


def complete_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of MANIFEST/NAME arguments: the catalog's names (the store is only read)."""
    from castore.store import Store, default_store_path  # noqa: PLC0415

    path = ctx.find_root().params.get("store_path") or os.environ.get("CONTINUITY_STORE") or default_store_path()
    if not os.path.exists(os.path.join(path, "config")):
        return []
    try:
        names = [t.name for t in Store.open(path, create=False).tags()]
    except Exception:  # noqa: BLE001 - completion never fails loudly
        return []
    from click.shell_completion import CompletionItem

    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]


def _write_ignores(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> frozenset[str]:
    from castore.api import write_ignores

    try:
        return write_ignores(value)
    except UnsafeInput as exc:
        raise click.BadParameter(str(exc)) from None


devices_opt = click.option(
    "--devices",
    type=click.Choice(["create", "check", "skip"]),
    default=None,
    help="Device nodes: create (default as root), check (confirm only), skip (default otherwise).",
)

write_ignore_opt = click.option(
    "--ignore-attr",
    "ignore_attr",
    multiple=True,
    metavar="ATTR",
    callback=_write_ignores,
    help="Do not apply ATTR (mode, uid, gid, owner, xattr, mtime): what a plain write gives instead (owner: "
    "you; mode: from the umask; no xattrs; mtime: now). Repeatable.",
)


#: the store this command made (ingest, pull), announced on stderr when it succeeds
NEW_STORE: list[str] = []


def announce_new_store() -> None:
    """Say that this command made a new store (once, at the end of a successful run)."""
    while NEW_STORE:
        click.echo(f"continuity: created a new store at {safe_line(NEW_STORE.pop())}", err=True)


class Ctx:
    def __init__(
        self, store_path: str | None, debug: bool, quiet: bool = False, verbose: int = 0, policy_path: str | None = None
    ) -> None:
        self.store_path = store_path
        self.debug = debug
        self.quiet = quiet  # -q: no progress, no notes; errors still print
        self.verbose = verbose  # -v: more detail on stderr (-vv: more)
        self.policy_path = policy_path  # --policy FILE (castore/sign/policy.py looks further)
        self._store: Store | None = None

    @property
    def open_store(self) -> Store | None:
        """The store, if this command opened it."""
        return self._store

    def writable_store(self, create: bool = False) -> Store:
        """The store, refused (ReadOnlyStore, with a hint) when it is read-only: for the verbs that write."""
        store = self.store(create=create)
        if store.readonly:
            from castore.store.readonly import refuse_write

            refuse_write(store.path)
        return store

    def store(self, create: bool = False) -> Store:
        """The store; a missing one is an error with a hint (``continuity init``), unless ``create``:
        the verbs that bring content in (ingest, pull, mount of a registry reference) make it, and say so."""
        if self._store is None:
            from castore.cli import phases  # noqa: PLC0415
            from castore.store import Store, default_store_path  # noqa: PLC0415

            path = self.store_path or default_store_path()
            new = not os.path.lexists(os.path.join(path, "config"))
            if new and not create:
                raise NoStore(
                    f"no store at {path}: run `continuity init` to make one (or check --store / CONTINUITY_STORE)"
                )
            phases.mark("before store")
            self._store = Store.open(path, create=create)
            phases.mark("store open")
            if new:  # said when the command succeeds (announce_new_store): a failure's stderr is its one error line
                NEW_STORE.append(os.path.abspath(path))
        return self._store

    def store_if_exists(self) -> Store | None:
        from castore.store import default_store_path  # noqa: PLC0415

        path = self.store_path or default_store_path()
        if not os.path.exists(os.path.join(path, "config")):
            return None
        return self.store(create=False)


def _unproc(name: object) -> object:
    """A /proc/self/fd/N[/rest] alias (the fd is closed by now) reduced to what it still tells: ``rest``."""
    if isinstance(name, str) and name.startswith("/proc/self/fd/"):
        rest = name[len("/proc/self/fd/") :].partition("/")[2]
        return rest or "(an open file)"
    return name


def fail(msg: str, code: int) -> None:
    from castore import progress

    progress.finish()
    click.echo(f"continuity: error: {safe_line(msg)}", err=True)
    sys.exit(code)


def quiet_broken_pipe() -> None:
    """The reader went away (``continuity ls X | head -1``): stop quietly, exit 141 as a shell's SIGPIPE would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError):
        pass
    sys.exit(141)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Map library errors raised in the block to one line on stderr and their exit code.

    Entered once, by the group around every command (``LazyGroup.invoke``):
    no command wraps itself. click's own exceptions pass through to ``main``.
    """
    try:
        yield
    except CastoreError as exc:
        _traceback_if_debug()
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        quiet_broken_pipe()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            quiet_broken_pipe()
        _traceback_if_debug()
        where = f"{_unproc(exc.filename)}: " if exc.filename else ""
        ctx = click.get_current_context(silent=True)
        ro = ctx.find_root().obj.open_store if ctx and isinstance(ctx.find_root().obj, Ctx) else None
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
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - last line of defence: never a traceback
        _traceback_if_debug()
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)", 1)


def _traceback_if_debug() -> None:
    ctx = click.get_current_context(silent=True)
    if os.environ.get("CONTINUITY_DEBUG") or (ctx and getattr(ctx.find_root().obj, "debug", False)):
        traceback.print_exc()


def handle_errors(fn: F) -> F:
    """``mapped_errors`` around one function (the group applies it to every command already)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with mapped_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class LazyGroup(click.Group):
    """A group whose commands' modules are imported on first use (startup stays cheap)."""

    #: command name -> module that registers it on main_group
    lazy: dict[str, str] = {}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            importlib.import_module(self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    #: command name -> its help's first paragraph, so that ``--help`` imports no command module
    #: (tests/test_startup.py checks each against the command's own help)
    summaries: dict[str, str] = {}

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, from ``summaries`` where a command's module is not imported yet."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name not in self.commands and name in self.summaries:  # click's own shortening, on a stand-in
                rows.append((name, click.Command(name, help=self.summaries[name]).get_short_help_str(limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the group and its command with every library error mapped (``mapped_errors``)."""
        with mapped_errors():
            return super().invoke(ctx)


#: verbs that draw a progress bar on a terminal (docs/cli.md)
LONG_VERBS = frozenset({"ingest", "checkout", "apply", "export", "copy", "push", "pull", "gc", "fsck"})


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_path",
    envvar="CONTINUITY_STORE",
    metavar="PATH",
    help="Store location (default: /var/lib/continuity for root, else $XDG_DATA_HOME/continuity; "
    "env CONTINUITY_STORE). Accepted before or after the verb.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr (errors still print).")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (repeat for more).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option(
    "--policy",
    "policy_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Trust policy (default: $CONTINUITY_POLICY, $XDG_CONFIG_HOME/continuity/policy.json, "
    "/etc/continuity/policy.json, else accept all; see docs/signing.md).",
)
@click.version_option(package_name="castore", prog_name="continuity")
@click.pass_context
def main_group(
    ctx: click.Context, store_path: str | None, quiet: bool, verbose: int, debug: bool, policy_path: str | None
) -> None:
    """A content-addressed store with a manifest catalog (containerd/continuity manifests).

    \b
    Examples:
      continuity ingest /srv/web --name web       # store a tree, print its manifest digest
      continuity list                             # the catalog
      continuity checkout web /tmp/web            # materialise it elsewhere
      continuity ls web | head                    # its paths
      continuity gc --dry-run                     # what garbage collection would free

    Exit codes: 0 ok, 1 differences or other failure, 2 usage, 3 unsafe input
    refused, 4 integrity, 5 busy, 6 resource limit. `continuity VERB --help`
    shows each verb's options and examples.
    """
    ctx.obj = Ctx(store_path, debug, quiet, verbose, policy_path)
    if debug:
        from castore.cli import phases  # noqa: PLC0415

        phases.mark("command module")  # click resolved (and imported) the command before this callback
        phases.enable()
    if ctx.invoked_subcommand in LONG_VERBS and not quiet and sys.stderr.isatty():
        from castore.cli.progress_view import install_if_terminal  # only when a bar can be drawn

        install_if_terminal(quiet)


def read_manifest_file(path: str) -> Manifest:
    from castore.fs.io import read_capped  # noqa: PLC0415 - not on every CLI start

    data = read_capped(path, MAX_MANIFEST_FILE, "a manifest", CorruptManifest)
    from castore.manifest import codec, validate  # noqa: PLC0415 - protobuf only when a manifest is read
    from castore.manifest.bounds import check_parse_cost  # noqa: PLC0415

    check_parse_cost(data, source=path)  # a file can be a parse bomb too: priced before protobuf allocates
    return validate(codec.loads(data, source=path))


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".pb", ".manifest")) or os.path.isfile(ref)


def resolve(ctx: Ctx, ref: str, *, need_store: bool = False) -> tuple[Manifest, str | None, Store | None]:
    """A MANIFEST argument: catalog name, digest, unique prefix (>= 12 hex), or file path."""
    m, digest, store = resolve_lazy(ctx, ref, need_store=need_store)
    if m is None:
        assert store is not None and digest is not None
        m = store.load_manifest(digest)
    return m, digest, store


def resolve_lazy(ctx: Ctx, ref: str, *, need_store: bool = False) -> tuple[Manifest | None, str | None, Store | None]:
    """``resolve``, but a manifest of the store is not read: (None, digest, store)."""
    from castore.store.revisions import NoSuchRevision, short_prefix_hint  # noqa: PLC0415

    if need_store and ctx.store_if_exists() is None and os.path.isfile(ref):
        # No store: a manifest file is still checked first (bad input is refused as such, exit 3), and one
        # that needs no content (fifos, empty files, directories) is served without a store.
        m = read_manifest_file(ref)
        from castore.store import manifest_refs

        if not manifest_refs(m):
            return m, None, None
        ctx.store()  # NoStore, with the hint
    store = ctx.store() if need_store else ctx.store_if_exists()
    if store is not None:
        try:
            digest = store.resolve(ref)
        except NoSuchRevision:
            if not os.path.isfile(ref):
                raise
            digest = None
        except NotFound:
            digest = None
        if digest is not None:
            store.require_manifest(digest)  # a stored blob is never taken for a manifest
            return None, digest, store
    if os.path.isfile(ref) or (os.path.exists(ref) and not os.path.isdir(ref)):
        return read_manifest_file(ref), None, store
    if os.path.isdir(ref):
        raise CorruptManifest(f"{ref}: is a directory, not a manifest")
    raise NotFound(f"no manifest named {ref!r} (not a name, revision, digest or file){short_prefix_hint(ref)}")


def print_json(obj: object) -> None:
    """Print one JSON document: ``{"schema": 1, ...}`` (see docs/json.md for the keys)."""
    from castore.cli.jsonout import document

    click.echo(json_text(document(obj)))
