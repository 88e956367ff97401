"""A second writer process: run one function in a forked child while this process runs another
(writing small files is CPU-bound in Python; both cores help). The child never touches LMDB (an
environment must not be used across a fork): what it needs is read before the fork, and what it
would write (records) it sends back, with its result or its error, through a pipe."""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
from collections.abc import Callable
from typing import Any

from castore import fs
from castore.errors import Busy, CastoreError, IntegrityError, ResourceLimit, UnsafeInput
from castore.timing import mark

_ERROR_BY_CODE: dict[int, type[CastoreError]] = {3: UnsafeInput, 4: IntegrityError, 5: Busy, 6: ResourceLimit}


def run_forked(
    child: Callable[[Callable[[], Any]], Any],
    parent: Callable[[], None],
    feed: Callable[[], Any] | None = None,
) -> Any:
    """Run ``child`` in a forked process while this one runs ``parent``; return what ``child``
    returned (plain data: marshal), or raise ``parent``'s error, else the child's (its class by
    exit code, an OSError as one), else "worker died" when it sent nothing whole.

    ``feed``: run here first, after the fork, for what only this process can read (LMDB); its
    result reaches the child through a memfd (written whole, then its length sent on a pipe: the
    child reads it when it needs it, and this process never waits on the child's reading: through
    the pipe itself, 1.8 MB waited ~150 ms on a child whose main thread held the GIL). ``child``
    gets a function that returns it, waiting for it if needed: the fork is not delayed by that read."""
    rfd, wfd = os.pipe()
    frfd, fwfd = os.pipe() if feed is not None else (-1, -1)
    mfd = os.memfd_create("continuity-feed", os.MFD_CLOEXEC) if feed is not None else -1
    ppid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            # Killed with its parent (a SIGKILLed checkout stops writing into its staging directory).
            fs.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != ppid:
                os._exit(1)  # the parent died before the line above
            os.close(rfd)
            received = _receiver(frfd, fwfd, mfd) if feed is not None else _nothing
            # marshal: plain tuples of bytes (52k rows: dumped in 9 ms, pickle 16 ms)
            payload = marshal.dumps(("ok", child(received)))
        except CastoreError as exc:
            payload = marshal.dumps(("error", exc.exit_code, str(exc)))
        except OSError as exc:
            payload = marshal.dumps(("oserror", exc.errno, exc.strerror, _plain(exc.filename)))
        except BaseException as exc:  # noqa: BLE001 - reported by the parent
            payload = marshal.dumps(("error", 1, f"{type(exc).__name__}: {exc}"))
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(wfd, view) :]
            os.close(wfd)  # EOF for the parent now, not after this process is torn down
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(wfd)
    failure: BaseException | None = None
    try:
        if feed is not None:
            os.close(frfd)
            try:
                data = marshal.dumps(feed())
                _send(mfd, data)
                os.write(fwfd, len(data).to_bytes(8, "little"))
            except BrokenPipeError:
                pass  # the child is gone: its error (or its death) is reported below
            finally:
                os.close(fwfd)
                os.close(mfd)
        parent()
    except BaseException as exc:  # noqa: BLE001 - the child must be reaped first
        failure = exc
    mark("own half")  # then the wait for the forked writer ("wait": its CPU is not in this process's)
    chunks = []
    try:
        while True:
            b = os.read(rfd, 1 << 20)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(rfd)
    msg = None
    if chunks:
        with contextlib.suppress(Exception):  # a torn message: reported below as a dead worker
            msg = marshal.loads(b"".join(chunks))  # while the child exits
    _, status = os.waitpid(pid, 0)
    if failure is not None:
        raise failure
    if not isinstance(msg, tuple) or not msg:
        raise CastoreError(f"checkout worker died (status {status})")
    if msg[0] == "ok":
        return msg[1]
    if msg[0] == "oserror":
        raise OSError(msg[1], msg[2], msg[3])
    raise _ERROR_BY_CODE.get(msg[1], CastoreError)(msg[2])


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _nothing() -> object:
    return None


def _receiver(rfd: int, wfd: int, mfd: int) -> Callable[[], object]:
    """In the child: a function that waits for the parent's feed (its length on the pipe ``rfd``, its
    bytes in the memfd ``mfd``) and returns it (CastoreError when the parent sent nothing)."""
    os.close(wfd)

    def received() -> object:
        try:
            n = int.from_bytes(os.read(rfd, 8), "little")
            data = os.pread(mfd, n, 0) if n else b""
            while 0 < len(data) < n:
                data += os.pread(mfd, n - len(data), len(data))
            return marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            raise CastoreError("checkout: the records for the second writer did not arrive") from None
        finally:
            os.close(rfd)
            os.close(mfd)

    return received


def _plain(name: object) -> str | bytes | None:
    return name if isinstance(name, (str, bytes)) or name is None else str(name)
