"""Client authorization beyond "signed by our CA": CN, SAN and fingerprint allow-lists."""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

import pytest

from trio_tlsecho import ClientConfig, ClientError, ConfigError, TLSFiles, echo_once
from trio_tlsecho._tls import AllowList, PeerIdentity

from .conftest import Start, issue_with_uri
from .logs import ServerLog


def _identity(
    cn: str | None = "alice", sans: tuple[str, ...] = ("DNS:alice",), fp: str = "ab" * 32
) -> PeerIdentity:
    return PeerIdentity(
        subject=f"CN={cn}", issuer="CN=ca", common_name=cn, sans=sans, fingerprint_sha256=fp, not_after=""
    )


def test_empty_allow_list_permits_everyone() -> None:
    assert not AllowList().restricts
    assert AllowList().permits(_identity())


def test_common_name() -> None:
    allow = AllowList(common_names=["alice"])
    assert allow.permits(_identity("alice"))
    assert not allow.permits(_identity("Alice"))
    assert not allow.permits(_identity(None, sans=()))


@pytest.mark.parametrize(
    ("entries", "kept", "admitted", "refused"),
    [
        pytest.param(
            ["DNS:Alice", "spiffe://example.org/ns/prod/sa/app"],
            {"DNS:alice", "URI:spiffe://example.org/ns/prod/sa/app"},
            ["DNS:ALICE", "URI:spiffe://example.org/ns/prod/sa/app"],
            # URIs are case-sensitive, and a URI never matches a DNS entry or vice versa.
            ["URI:spiffe://example.org/ns/prod/sa/APP", "URI:alice"],
            id="dns-and-uri",
        ),
        pytest.param(
            ["IP:10.0.0.1", "ip:2001:db8::1"],
            {"IP:10.0.0.1", "IP:2001:db8::1"},
            # As getpeercert() writes them: "IP Address", IPv6 uncompressed and upper-case.
            ["IP Address:10.0.0.1", "IP Address:2001:DB8:0:0:0:0:0:1"],
            ["IP Address:10.0.0.2", "DNS:10.0.0.1"],
            id="ip-in-any-spelling",
        ),
    ],
)
def test_san_entries_are_normalised_and_matched(
    entries: list[str], kept: set[str], admitted: list[str], refused: list[str]
) -> None:
    allow = AllowList(sans=entries)
    assert allow.sans == frozenset(kept)
    for san in admitted:
        assert allow.permits(_identity("x", sans=(san,))), san
    for san in refused:
        assert not allow.permits(_identity("x", sans=(san,))), san


def test_fingerprint_accepts_colons_and_case() -> None:
    digest = hashlib.sha256(b"cert").hexdigest()
    colons = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    allow = AllowList(fingerprints=[colons])
    assert allow.permits(_identity(fp=digest))
    assert not allow.permits(_identity(fp="00" * 32))


def test_a_single_string_is_one_entry_not_its_characters() -> None:
    digest = hashlib.sha256(b"cert").hexdigest()
    allow = AllowList(common_names="alice", sans="DNS:alice.example", fingerprints=digest)
    assert allow == AllowList(common_names=["alice"], sans=["DNS:alice.example"], fingerprints=[digest])
    assert allow.permits(_identity("alice"))
    assert not allow.permits(_identity("e", sans=()))


def test_any_entry_admits() -> None:
    allow = AllowList(common_names=["bob"], fingerprints=["cd" * 32])
    assert allow.permits(_identity("bob"))
    assert allow.permits(_identity("carol", fp="cd" * 32))
    assert not allow.permits(_identity("carol"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fingerprints": ["abc"]}, "expected 64 hex digits"),
        ({"fingerprints": ["zz" * 32]}, "expected 64 hex digits"),
        ({"sans": ["DNS:"]}, "bad --allow-san"),
        ({"sans": ["a b"]}, "bad --allow-san"),
        ({"sans": ["IP:10.0.0.300"]}, "'IP:10.0.0.300': not an IP address"),
        ({"common_names": [""]}, "empty or has surrounding spaces"),
    ],
)
def test_bad_entries(kwargs: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AllowList(**kwargs)  # type: ignore[arg-type]


# -- live ----------------------------------------------------------------------------


def _fingerprint(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


@pytest.mark.parametrize(
    "allow",
    [
        AllowList(common_names=["alice"]),
        AllowList(sans=["DNS:alice"]),
        "fingerprint",
    ],
    ids=["cn", "san", "fingerprint"],
)
async def test_server_refuses_identities_not_allowed(
    start: Start,
    pki: Path,
    client_config: ClientConfig,
    log: ServerLog,
    allow: AllowList | str,
) -> None:
    if allow == "fingerprint":
        allow = AllowList(fingerprints=[_fingerprint(pki / "alice.pem")])
    assert isinstance(allow, AllowList)
    [address] = await start(allow=allow)
    alice = ClientConfig(tls=TLSFiles.from_dir(pki, "alice"))
    assert (await echo_once(address, alice, b"alice here")).received == 10
    with pytest.raises(ClientError):
        await echo_once(address, client_config, b"client here")
    [refusal] = log.find("refused: identity not allowed")
    assert refusal.levelno == logging.WARNING
    assert "subject=O=trio_tlsecho development PKI,OU=client,CN=client" in refusal.getMessage()
    assert (await echo_once(address, alice, b"alice again")).received == 11


async def test_spiffe_uri_san(start: Start, pki: Path, tmp_path: Path, client_config: ClientConfig) -> None:
    spiffe = "spiffe://example.org/ns/prod/sa/echo-client"
    files = issue_with_uri(pki, tmp_path, "workload", spiffe)
    [address] = await start(allow=AllowList(sans=[f"URI:{spiffe}"]))
    assert (await echo_once(address, ClientConfig(tls=files), b"spiffe")).received == 6
    with pytest.raises(ClientError):
        await echo_once(address, client_config, b"not me")
