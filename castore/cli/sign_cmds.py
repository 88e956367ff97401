"""Signing verbs: keygen, sign, verify-signature (docs/signing.md)."""

from __future__ import annotations

import os
import sys

import click

from castore.cli.common import Ctx, main_group, print_json, resolve_lazy
from castore.errors import IntegrityError, NotFound, UnsafeInput
from castore.fs.io import read_capped
from castore.sign import allowed_signers
from castore.sign.keys import generate, load_private_key, public_comment
from castore.sign.sshsig import NAMESPACE, BadSignature, armor, dearmor, parse_signature, sign_message, verify_message

MAX_SIG_FILE = 64 << 10


def _passphrase() -> bytes:
    """An encrypted key's passphrase: prompted on the terminal, else one line of stdin."""
    if sys.stdin.isatty():
        return str(click.prompt("Passphrase for the key", hide_input=True, err=True)).encode()
    line = sys.stdin.buffer.readline(4096)
    if not line:
        raise UnsafeInput("the key is encrypted: give its passphrase on stdin or run from a terminal")
    return line.rstrip(b"\r\n")


def _store_manifest(obj: Ctx, manifest: str) -> tuple[str, object]:
    _, digest, store = resolve_lazy(obj, manifest, need_store=True)
    if digest is None or store is None:
        raise NotFound(
            f"{manifest}: signatures are kept for manifests of the store; store it first (`continuity tag FILE NAME`)"
        )
    if not store.manifest_indexed(digest):
        raise NotFound(f"no manifest {digest} in the store")
    return digest, store


def _read_sig(path: str) -> bytes:
    if path == "-":
        data = sys.stdin.buffer.read(MAX_SIG_FILE + 1)
    else:
        data = read_capped(path, MAX_SIG_FILE, "an SSH signature", UnsafeInput, too_large=BadSignature)
    if len(data) > MAX_SIG_FILE:
        raise BadSignature(f"{path}: too large to be an SSH signature")
    return dearmor(data, what=path)


@main_group.command("keygen")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-C", "--comment", default="", help="Comment of the public key (e.g. your email: the principal).")
@click.option("--passphrase-stdin", is_flag=True, help="Encrypt the key with a passphrase read from stdin.")
@click.option("--json", "as_json", is_flag=True)
def keygen_cmd(file: str, comment: str, passphrase_stdin: bool, as_json: bool) -> None:
    """Write a new OpenSSH Ed25519 key pair: FILE (private, 0600) and FILE.pub.

    \b
    Examples:
      continuity keygen ~/.config/continuity/release-key
      continuity keygen release-key --json
    """
    pw = sys.stdin.buffer.readline(4096).rstrip(b"\r\n") if passphrase_stdin else None
    if passphrase_stdin and not pw:
        raise UnsafeInput("--passphrase-stdin: empty passphrase")
    pub = generate(file, comment, pw)
    if as_json:
        print_json(
            {"private_key": file, "public_key": file + ".pub", "fingerprint": pub.fingerprint, "key_type": pub.key_type}
        )
    else:
        click.echo(f"{pub.fingerprint} {file}.pub")


@main_group.command("sign")
@click.argument("manifest")
@click.option("--key", "key_file", metavar="FILE", help="OpenSSH private key (e.g. ~/.ssh/id_ed25519).")
@click.option("--import", "import_file", metavar="SIG|-", help="Store a signature made elsewhere (ssh-keygen -Y sign).")
@click.option("-o", "--output", metavar="SIG|-", help="Also write the armored signature to SIG (- for stdout).")
@click.option("--principal", help="Who signs (default: the comment of the key's .pub file).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sign_cmd(
    obj: Ctx,
    manifest: str,
    key_file: str | None,
    import_file: str | None,
    output: str | None,
    principal: str | None,
    as_json: bool,
) -> None:
    """Sign MANIFEST (namespace "continuity", over its stored bytes) and keep the signature in the store.

    \b
    Examples:
      continuity sign web --key release-key
      continuity sign web --key release-key -o web.sig
      continuity sign web --import web.sig
    """
    from castore.store.signatures import add

    if (key_file is None) == (import_file is None):
        raise click.UsageError("give either --key FILE or --import SIG")
    if principal is not None and (not principal.isprintable() or len(principal) > 255):
        raise click.BadParameter("a principal is 1-255 printable characters", param_hint="--principal")
    digest, store = _store_manifest(obj, manifest)
    message = store.read_blob(digest)  # type: ignore[attr-defined]
    if key_file is not None:
        key = load_private_key(os.path.expanduser(key_file), _passphrase)
        raw = sign_message(key, message, sha256=bytes.fromhex(digest[7:]))
        sig = parse_signature(raw)
        principal = principal or public_comment(os.path.expanduser(key_file))
        source = "sign"
    else:
        assert import_file is not None
        sig = parse_signature(_read_sig(import_file), what=import_file)
        verify_message(sig, message, NAMESPACE, what=f"signature {import_file}", sha256=bytes.fromhex(digest[7:]))
        raw, source = sig.raw, "import"
    rec, added = add(store, digest, sig, principal=principal, source=source, message=message)  # type: ignore[arg-type]
    if output is not None:
        text = armor(raw)
        if output == "-":
            click.echo(text, nl=False)
        else:
            with open(output, "w") as f:
                f.write(text)
    if as_json:
        print_json({"digest": digest, **rec.as_json(), "added": added})
    elif output != "-":
        click.echo(f"{digest} {rec.fingerprint}" + (f" {rec.principal}" if rec.principal else ""))


@main_group.command("verify-signature")
@click.argument("manifest")
@click.option(
    "--allowed-signers",
    "signers_file",
    required=True,
    metavar="FILE",
    help="git's allowed_signers format: PRINCIPALS [OPTIONS] KEYTYPE BASE64.",
)
@click.option("-I", "--principal", "principals", multiple=True, help="Accept only these principals. Repeatable.")
@click.option("-s", "--signature", "sig_file", metavar="SIG", help="Check this signature file, not the stored ones.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify_signature_cmd(
    obj: Ctx, manifest: str, signers_file: str, principals: tuple[str, ...], sig_file: str | None, as_json: bool
) -> None:
    """Exit 0 when a signature of MANIFEST verifies for a principal of FILE, 4 otherwise.

    \b
    Examples:
      continuity verify-signature web --allowed-signers allowed_signers
      continuity verify-signature web --allowed-signers allowed_signers --json
    """
    import time

    from castore.store.signatures import for_manifest

    signers = allowed_signers.load(signers_file)
    digest, store = _store_manifest(obj, manifest)
    message = store.read_blob(digest)  # type: ignore[attr-defined]
    sigs = [_read_sig(sig_file)] if sig_file else [r.raw for r in for_manifest(store, digest)]  # type: ignore
    if not sigs:
        raise IntegrityError(f"manifest {digest} has no signature")
    good, problems = [], []
    for raw in sigs:
        try:
            sig = parse_signature(raw)
            who = allowed_signers.find(signers, sig.key, list(principals) or None, NAMESPACE, time.time())
            if who is None:
                problems.append(f"{sig.fingerprint} is not an allowed signer")
                continue
            verify_message(sig, message, what=f"signature of {digest}", sha256=bytes.fromhex(digest[7:]))
        except BadSignature as exc:
            problems.append(str(exc))
            continue
        good.append({"principal": who, "fingerprint": sig.fingerprint, "key_type": sig.key.key_type})
    if as_json:
        print_json({"digest": digest, "verified": bool(good), "signatures": good, "problems": problems})
    else:
        for g in good:
            click.echo(
                f'Good "{NAMESPACE}" signature of {digest} for {g["principal"]} '
                f"with {g['key_type']} key {g['fingerprint']}"
            )
    if not good:
        raise IntegrityError(
            f"manifest {digest}: no signature verifies for an allowed signer of {signers_file} ({problems[0]})"
        )
