"""Signed manifests: OpenSSH's SSHSIG format, keys, git's allowed_signers, the trust policy.

Pure: no store, no IO beyond reading the files a user names. See docs/signing.md.
"""

from castore.sign.sshsig import NAMESPACE, Signature, armor, dearmor, parse_signature, sign_message, verify_message

__all__ = ["NAMESPACE", "Signature", "armor", "dearmor", "parse_signature", "sign_message", "verify_message"]
