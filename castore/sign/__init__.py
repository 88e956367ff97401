"""Signed manifests: OpenSSH's SSHSIG format, keys, git's allowed_signers, the trust policy.

Pure: no store, no IO beyond reading the files a user names. See docs/signing.md.
"""

from typing import Any

__all__ = ["NAMESPACE", "Signature", "armor", "dearmor", "parse_signature", "sign_message", "verify_message"]


def __getattr__(name: str) -> Any:
    """The names of castore.sign.sshsig, imported on first use: it loads the cryptography package
    (~40 ms), which a checkout without a signedBy policy never needs (castore.sign.policy)."""
    if name in __all__:
        from castore.sign import sshsig

        return getattr(sshsig, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
