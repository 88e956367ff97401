"""Property tests of the manifest codec and validator: round trips of valid manifests, hostile bytes."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from castore.errors import CastoreError, CorruptManifest, InvalidManifest
from castore.manifest import codec, dumps, loads, render, validate
from castore.manifest.entries import split_entries
from castore.manifest.validate import PATH_MAX, path_problem
from tests.fuzz.strategies import examples, manifests, mutated


def _decode_checked(data: bytes) -> object:
    """decode + validate; only castore's errors may come out, and what passes obeys the rules."""
    try:
        m = validate(loads(data, source="fuzz"))
    except (CorruptManifest, InvalidManifest):
        return None
    for r in m.resources:
        for p in r.paths:
            parts = p.split("/")
            assert p.startswith("/") and p != "/", p
            assert "" not in parts[1:] and "." not in parts and ".." not in parts, p
            assert len(p.encode("utf-8", "surrogateescape")) <= PATH_MAX
    return m


@settings(max_examples=examples(50))
@given(manifests())
def test_round_trip(m: object) -> None:
    validate(m)  # the generator makes valid manifests only
    data = dumps(m)
    assert loads(data) == m
    assert dumps(loads(data)) == data  # deterministic
    entries, paths = split_entries(data)
    assert paths == [r.paths for r in m.resources]  # type: ignore[attr-defined]
    assert [codec.decode_entry(e) for e in entries] == list(m.resources)  # type: ignore[attr-defined]
    json.loads(render.dumps_json(m))
    codec.dumps_text(m)


@settings(max_examples=examples(300))
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    _decode_checked(data)
    try:
        split_entries(data, source="fuzz")
    except CastoreError:
        pass


@settings(max_examples=examples(50))
@given(st.data())
def test_mutated_manifests_raise_only_our_errors(data: st.DataObject) -> None:
    m = data.draw(manifests())
    raw = data.draw(mutated(dumps(m)))
    _decode_checked(raw)
    try:
        split_entries(raw, source="fuzz")
    except CastoreError:
        pass


@settings(max_examples=examples(150))
@given(
    st.lists(st.sampled_from(["", ".", "..", "a", "b", "\x00", "...", "\udcff", "x" * 256]), max_size=6),
    st.booleans(),
    st.booleans(),
)
def test_path_problem_catches_every_escape(parts: list[str], lead: bool, trail: bool) -> None:
    p = ("/" if lead else "") + "/".join(parts) + ("/" if trail else "")
    if path_problem(p) is None:
        comps = p.split("/")
        assert p.startswith("/") and len(comps) > 1 and comps[0] == ""
        assert all(c not in ("", ".", "..") and "\x00" not in c for c in comps[1:]), p
