"""git's allowed_signers format: principals with wildcards and negation, options, bad lines."""

from __future__ import annotations

import time

import pytest

from castore.errors import UnsafeInput
from castore.sign.allowed_signers import find, match_list, parse
from castore.sign.keys import ED25519

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpxrjkhYLS9MIABSgbbfGsCXheuEPvhl0cIj/E15Aed"


def test_patterns() -> None:
    assert match_list("a@example.com", "*@example.com")
    assert match_list("ab", "a?")
    assert not match_list("a@evil.com", "*@example.com")
    assert not match_list("bad@example.com", "*@example.com,!bad@*")
    assert match_list("x", "y,x")


def test_lines_and_options() -> None:
    text = f"""# comment

*@example.com,!bad@example.com {KEY} the comment
"ops@example.com" namespaces="continuity",valid-after="20200101",valid-before="29991231235959Z" {KEY}
git@example.com namespaces="git" {KEY}
ca@example.com cert-authority {KEY}
"""
    signers = parse(text, "f")
    assert [s.line for s in signers] == [3, 4, 5, 6]
    assert signers[0].key.key_type == ED25519
    key, now = signers[0].key, time.time()
    assert find(signers, key, ["a@example.com"], "continuity", now) == "a@example.com"
    assert find(signers, key, ["bad@example.com"], "continuity", now) is None
    assert find(signers[1:], key, ["ops@example.com"], "continuity", now) == "ops@example.com"
    assert find(signers[1:], key, ["ops@example.com"], "continuity", 0.0) is None  # before valid-after
    assert find(signers[2:], key, ["git@example.com"], "continuity", now) is None  # another namespace
    assert find(signers[3:], key, ["ca@example.com"], "continuity", now) is None  # certificates: unsupported
    assert find(signers, key, None, "continuity", now) == "*@example.com,!bad@example.com"


@pytest.mark.parametrize(
    "line",
    [
        "only-a-principal",
        f"p@x bogus-option {KEY}",
        f"p@x namespaces=continuity {KEY}",
        f'p@x valid-after="2020" {KEY}',
        f'p@x namespaces="unterminated {KEY}',
        "p@x ssh-ed25519 !!!notbase64",
        "p@x ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAAAgQ==",
        "p@x ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",
    ],
)
def test_bad_lines(line: str) -> None:
    with pytest.raises(UnsafeInput, match="f:1"):
        parse(line, "f")


def test_patterns_are_linear() -> None:
    t = time.perf_counter()
    assert not match_list("a" * 255, "*a" * 40 + "b")
    assert time.perf_counter() - t < 1.0
    assert match_list("a" * 255, "*a" * 40)
    assert match_list("", "*") and not match_list("", "?") and match_list("abc", "a*c") and not match_list("ab", "a*c")
