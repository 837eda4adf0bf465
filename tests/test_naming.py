"""Exposed names: safe characters, length cap with hash suffix, collisions, determinism (DESIGN §3)."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest

from harness import LocalUpstream, bridge_client, raw_call, tool_names, write_config
from mcp_bridge.governance.naming import assign_names, base_name
from mcp_bridge.sandbox.localservers import WEIRD_NAMES

SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def names(entries: list[tuple[str, str]], max_length: int = 64) -> dict[tuple[str, str], str]:
    return assign_names(entries, separator="__", max_length=max_length)


def test_plain_names_are_server_separator_tool() -> None:
    assert names([("docs", "search")]) == {("docs", "search"): "docs__search"}


def test_unsafe_characters_become_underscores() -> None:
    got = names([("docs", "a.b/c d"), ("docs", "héllo")])
    assert got[("docs", "a.b/c d")] == "docs__a_b_c_d"
    assert got[("docs", "héllo")] == "docs__h_llo"


def test_long_names_are_cut_with_the_hash_of_the_full_original() -> None:
    tool = "t" * 100
    got = names([("docs", tool)])[("docs", tool)]
    digest = hashlib.sha256(f"docs__{tool}".encode()).hexdigest()[:6]
    assert len(got) == 64 and got.endswith("_" + digest) and got.startswith("docs__ttt")


def test_the_hash_is_taken_before_character_replacement() -> None:
    tool = "ü" * 80
    got = base_name("s", tool, "__", 64)
    assert got.endswith("_" + hashlib.sha256(f"s__{tool}".encode()).hexdigest()[:6])


def test_sanitized_collisions_get_suffixes_and_the_exact_name_keeps_its_own() -> None:
    got = names([("docs", "a.b"), ("docs", "a_b"), ("docs", "a b")])
    assert got[("docs", "a_b")] == "docs__a_b"
    assert got[("docs", "a.b")].startswith("docs__a_b_") and got[("docs", "a b")].startswith("docs__a_b_")
    assert len(set(got.values())) == 3


def test_names_never_collide_across_servers() -> None:
    got = names([("a", "_x"), ("a_", "x"), ("alpha", "echo"), ("beta", "echo")])
    assert len(set(got.values())) == 4
    assert got[("alpha", "echo")] == "alpha__echo" and got[("beta", "echo")] == "beta__echo"


def test_names_depend_only_on_the_set_not_its_order() -> None:
    entries = [("s", n) for n in [*WEIRD_NAMES, "x" * 200, "y" * 200, "a.b", "a_b", "a b"]]
    expected = names(entries)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = entries[:]
        rng.shuffle(shuffled)
        assert names(shuffled) == expected


@pytest.mark.parametrize("max_length", [16, 40, 60, 64, 128])
def test_every_name_is_safe_unique_and_within_the_limit(max_length: int) -> None:
    rng = random.Random(max_length)
    alphabet = "ab._/ -üé中🙂"
    entries = [
        (rng.choice(["s", "srv", "a_b"]), "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 150))))
        for _ in range(500)
    ]
    got = names(entries, max_length)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) and len(n) <= max_length for n in got.values())
    assert len(set(got.values())) == len(set(entries))


@pytest.mark.anyio
async def test_awkward_upstream_names_are_exposed_safely_uniquely_and_stably(tmp_path: Path) -> None:
    alpha = LocalUpstream("alpha", tmp_path, weird_names=True).start()
    beta = LocalUpstream("beta", tmp_path, weird_names=True).start()
    try:
        config = write_config(tmp_path / "config.yaml", {"alpha": alpha.server_config(), "beta": beta.server_config()})
        async with bridge_client(config, tmp_path / "home1") as client:
            first = await tool_names(client)
            # A sanitized, hash-suffixed name routes to the right original tool.
            long_name = next(n for n in first if n.startswith("alpha__very_long_"))
            result = await raw_call(client, long_name)
            assert '"tool": "very_long_' in result["content"][0]["text"]
        async with bridge_client(config, tmp_path / "home2") as client:  # a fresh home: no cache involved
            second = await tool_names(client)
    finally:
        alpha.kill()
        beta.kill()
    assert all(SAFE.match(n) for n in first), [n for n in first if not SAFE.match(n)]
    assert len(first) == len(set(first))
    assert sorted(first) == sorted(second)
    assert "alpha__echo" in first and "beta__echo" in first
    assert sum(1 for n in first if n.startswith("alpha__")) == 10 + len(WEIRD_NAMES)  # all of alpha's tools
