"""Benchmark: sign + verify of a ``many``-sized manifest (100k files) vs ``ssh-keygen -Y sign`` + ``-Y verify``.

    python scripts/bench/sign.py [--files 100000] [--runs 7]

The manifest is synthetic, laid out like make_corpus.py's ``many`` corpus
(dNNN/sNN/fNNN.dat, seeded sizes 0..2048 B, one directory per 100 files),
encoded by castore's codec and stored in a throwaway store (by the library:
its file blobs are not needed to sign it). Timed, medians of --runs:

  library   read + sign_message, read + parse + verify_message over the stored bytes (in process;
            each read checks the bytes against the manifest digest, which is H(message) of a
            sha256 SSHSIG, so each side hashes the 11 MB once)
  cli       `continuity sign NAME --key K` + `continuity verify-signature NAME --allowed-signers F`
  ssh-keygen `ssh-keygen -Y sign -n continuity` + `ssh-keygen -Y verify` over the same bytes

Target: library sign + verify under 50 ms. Ratios are printed against ssh-keygen.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from castore.manifest import Manifest, codec  # noqa: E402
from castore.manifest.model import Directory, RegularFile  # noqa: E402
from castore.sign.keys import generate, load_private_key  # noqa: E402
from castore.sign.sshsig import dearmor, parse_signature, sign_message, verify_message  # noqa: E402
from castore.store import Store  # noqa: E402
from castore.store.meta import KIND_MANIFEST  # noqa: E402

T0 = 1_600_000_000 * 10**9


def many_manifest(files: int, seed: int = 1) -> Manifest:
    rnd = random.Random(seed)
    res: list[object] = [Directory(paths=("/",), perm=0o755)]
    dirs: set[str] = set()
    for i in range(files):
        d1, d2 = f"d{i // 10000:03d}", f"s{(i // 100) % 100:02d}"
        for d in (f"/{d1}", f"/{d1}/{d2}"):
            if d not in dirs:
                dirs.add(d)
                res.append(Directory(paths=(d,), perm=0o755, mtime_ns=T0))
        size = rnd.randint(0, 2048)
        digest = "sha256:" + rnd.getrandbits(256).to_bytes(32, "big").hex()
        res.append(RegularFile(paths=(f"/{d1}/{d2}/f{i % 100:03d}.dat",), size=size, digest=digest, mtime_ns=T0))
    return Manifest.of(res)  # type: ignore[arg-type]


def median_ms(fn: object, runs: int) -> float:
    return median_ms_cpu(fn, runs)[0]


def median_ms_cpu(fn: object, runs: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds (this process's CPU: the honest figure on a loaded machine)."""
    times, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(times), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-sign-")
    try:
        data = codec.dumps(many_manifest(args.files))
        store = Store.open(os.path.join(work, "store"))
        with store.shared_lock():
            digest = store.put_blob(data, KIND_MANIFEST)
            store.meta.write(
                lambda t: (store.record_manifest(t, digest, []), store.set_tag(t, "many", digest, len(data)))
            )
        key_path = os.path.join(work, "key")
        pub = generate(key_path, "bench@example.com")
        signers = os.path.join(work, "allowed_signers")
        with open(signers, "w") as f:
            f.write(f"bench@example.com {pub.openssh()}\n")
        msg_path = os.path.join(work, "manifest.pb")
        with open(msg_path, "wb") as f:
            f.write(data)
        print(f"manifest: {args.files} files, {len(data)} bytes, {digest}")

        key = load_private_key(key_path, lambda: b"")

        h = bytes.fromhex(digest[7:])

        def library() -> None:  # as `sign` and `verify-signature` do: the bytes read (and checked) from the store
            raw = sign_message(key, store.read_blob(digest), sha256=h)
            verify_message(parse_signature(dearmor(raw)), store.read_blob(digest), sha256=h)

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
        base = [sys.executable, "-m", "castore", "--store", store.path]

        def cli() -> None:
            subprocess.run([*base, "sign", "many", "--key", key_path], check=True, capture_output=True, env=env)
            subprocess.run(
                [*base, "verify-signature", "many", "--allowed-signers", signers],
                check=True,
                capture_output=True,
                env=env,
            )

        sig_path = msg_path + ".sig"

        def ssh() -> None:
            if os.path.exists(sig_path):
                os.unlink(sig_path)
            subprocess.run(
                ["ssh-keygen", "-Y", "sign", "-f", key_path, "-n", "continuity", msg_path],
                check=True,
                capture_output=True,
            )
            with open(msg_path, "rb") as f:
                subprocess.run(
                    [
                        "ssh-keygen",
                        "-Y",
                        "verify",
                        "-f",
                        signers,
                        "-I",
                        "bench@example.com",
                        "-n",
                        "continuity",
                        "-s",
                        sig_path,
                    ],
                    stdin=f,
                    check=True,
                    capture_output=True,
                )

        lib_ms, lib_cpu = median_ms_cpu(library, args.runs)
        cli_ms = median_ms(cli, args.runs)
        print(
            f"library sign+verify: {lib_ms:8.1f} ms wall, {lib_cpu:.1f} ms cpu  "
            f"(target < 50 ms: wall {'ok' if lib_ms < 50 else 'MISSED'}, cpu {'ok' if lib_cpu < 50 else 'MISSED'})"
        )
        print(f"cli     sign+verify: {cli_ms:8.1f} ms  (two `continuity` processes)")
        if shutil.which("ssh-keygen"):
            ssh_ms = median_ms(ssh, args.runs)
            print(f"ssh-keygen -Y sign+verify: {ssh_ms:8.1f} ms")
            print(f"ratio library/ssh-keygen: {lib_ms / ssh_ms:.2f}; cli/ssh-keygen: {cli_ms / ssh_ms:.2f}")
        else:
            print("ssh-keygen not installed (Debian openssh-client): no comparison")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
