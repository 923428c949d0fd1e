"""Property-based and fuzz tests: configuration, the command line, echo framing, TLS input.

Hypothesis drives the pure parts (sync tests; where trio is needed an example
calls ``trio.run`` itself, so examples stay independent).  The live-server fuzz
run is not hypothesis: one fixed seed, a fixed number of connections, each
ended by the client's half-close so that no connection waits for a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import math
import random
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trio_tlsecho import (
    Address,
    AllowList,
    ClientConfig,
    ConfigError,
    ServerConfig,
    ServerMetrics,
    TLSFiles,
    client_context,
    echo_once,
    open_client,
    serve,
)
from trio_tlsecho._cli import build_parser
from trio_tlsecho._server._pipeline import run_connection
from trio_tlsecho._server._state import ServerState

from .conftest import assert_fds_settle, open_fds
from .logs import ServerLog

# derandomize: the same examples on every run (CI must be deterministic); database=None:
# nothing written into the checkout.
FAST = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HANG = 60


def value_or_config_error(build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What *build* returns, or the ConfigError it raised; anything else propagates (a bug)."""
    try:
        return build(*args, **kwargs)
    except ConfigError as exc:
        return exc


# -- Address.parse ---------------------------------------------------------------------

# Text that looks like an address more often than st.text() alone would: hosts, the
# separators the parser splits on, and ports written with every kind of Unicode digit.
_hosts = st.sampled_from(
    ["", "localhost", "127.0.0.1", "::1", "[::1]", "a b", "ü.example", "x" * 70]
) | st.text(max_size=12)
_ports = (
    st.integers(-5, 70000).map(str)
    | st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6)
    | st.text(max_size=6)
)
_address_like = st.builds(
    lambda host, sep, port: host + sep + port,
    _hosts,
    st.sampled_from([":", "]:", "", "::", " : "]),
    _ports,
)


@FAST
@given(text=_address_like | st.text(max_size=30), default_host=st.none() | _hosts)
@example(text="localhost:²", default_host=None)  # "²".isdigit() is True, int("²") fails
def test_address_parse_returns_an_address_or_raises_config_error(text: str, default_host: str | None) -> None:
    address = value_or_config_error(Address.parse, text, default_host=default_host)
    if isinstance(address, ConfigError):
        assert "\n" not in str(address)
        return
    assert isinstance(address, Address)
    assert 0 <= address.port <= 65535
    assert address.host
    assert not any(c.isspace() for c in address.host)


_v6 = st.ip_addresses(v=6).map(str)
_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)


@FAST
@given(host=_names | st.ip_addresses(v=4).map(str) | _v6, port=st.integers(0, 65535))
def test_address_round_trips_through_its_text(host: str, port: int) -> None:
    address = Address(host, port)
    assert Address.parse(str(address)) == address


# -- ServerConfig / ClientConfig / AllowList ------------------------------------------

_numbers: st.SearchStrategy[Any] = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(10**20), 10**20)
    | st.booleans()
    | st.sampled_from([0, 0.0, -0.0, 1e-320, math.inf, -math.inf, math.nan, 2**63])
)
_texts = st.text(max_size=20)


@st.composite
def _server_config_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """Any subset of ServerConfig's keywords, each with a value of the documented type."""
    choices: dict[str, st.SearchStrategy[Any]] = {
        "listen": st.lists(_address_like | _texts, max_size=3),
        "handler": _texts,
        "handshake_timeout": _numbers,
        "min_tls_version": _texts
        | st.sampled_from(["1.2", "1.3", "1.1", "TLSv1_3"])
        | st.sampled_from(ssl.TLSVersion),
        "idle_timeout": st.none() | _numbers,
        "max_connections": st.none() | _numbers,
        "shutdown_grace": _numbers,
        "crl": st.none() | _texts,
        "keylog": st.none() | _texts,
        "session_tickets": st.booleans(),
        "proxy_protocol": st.booleans(),
        "proxy_from": st.lists(
            _texts | st.ip_addresses().map(str) | st.from_regex(r"10\.0\.0\.0/\d{1,3}"), max_size=3
        ),
    }
    keys = draw(st.lists(st.sampled_from(sorted(choices)), unique=True))
    return {key: draw(choices[key]) for key in keys}


@FAST
@given(kwargs=_server_config_kwargs())
def test_server_config_is_a_value_or_config_error(kwargs: dict[str, Any]) -> None:
    tls = TLSFiles(cert="server.pem", key="server.key", ca="ca.pem")
    config = value_or_config_error(ServerConfig, tls=tls, **kwargs)
    if isinstance(config, ConfigError):
        assert "\n" not in str(config)
        return
    assert config.listen
    assert all(isinstance(a, Address) and 0 <= a.port <= 65535 for a in config.listen)
    assert math.isfinite(config.handshake_timeout)
    assert config.handshake_timeout > 0
    assert config.idle_timeout is None or 0 < config.idle_timeout < math.inf
    assert config.max_connections is None or config.max_connections >= 1
    assert 0 <= config.shutdown_grace < math.inf
    assert config.min_tls_version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


@FAST
@given(timeout=_numbers, hostname=st.none() | _texts)
def test_client_config_is_a_value_or_config_error(timeout: Any, hostname: str | None) -> None:
    tls = TLSFiles(cert="client.pem", key="client.key", ca="ca.pem")
    config = value_or_config_error(ClientConfig, tls=tls, handshake_timeout=timeout, server_hostname=hostname)
    if isinstance(config, ConfigError):
        return
    assert 0 < config.handshake_timeout < math.inf


@FAST
@given(
    cns=st.lists(_texts, max_size=3),
    sans=st.lists(
        _texts | st.builds("{}:{}".format, st.sampled_from(["DNS", "URI", "dns", "IP"]), _texts), max_size=3
    ),
    fingerprints=st.lists(_texts | st.text("0123456789abcdefABCDEF:", min_size=60, max_size=100), max_size=3),
)
def test_allow_list_is_a_value_or_config_error(
    cns: list[str], sans: list[str], fingerprints: list[str]
) -> None:
    allow = value_or_config_error(AllowList, common_names=cns, sans=sans, fingerprints=fingerprints)
    if isinstance(allow, ConfigError):
        return
    assert all(len(f) == 64 for f in allow.fingerprints)
    assert all(s.startswith(("DNS:", "URI:")) for s in allow.sans)


# -- the command-line parser -----------------------------------------------------------


def _subcommand_flags() -> dict[str, tuple[list[str], list[str]]]:
    """For each subcommand: (flags that take a value, flags that take none), read off the
    parser itself, so that flags added later are fuzzed too."""
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out: dict[str, tuple[list[str], list[str]]] = {}
    for name, p in sub.choices.items():
        valued, bare = [], []
        for action in p._actions:
            if not action.option_strings or isinstance(
                action, (argparse._HelpAction, argparse._VersionAction)
            ):
                continue
            (bare if action.nargs == 0 else valued).extend(action.option_strings)
        out[name] = (valued, bare)
    return out


FLAGS = _subcommand_flags()

# Values: anything that cannot be taken for an option (a leading "-" followed by a
# letter would be, and "--he" is --help), negative numbers, and the classics.
_values = (
    _texts.filter(lambda s: not s.startswith("-"))
    | st.from_regex(r"-[0-9]{1,4}(\.[0-9]{0,3})?", fullmatch=True)
    | st.sampled_from(
        [
            "",
            "0",
            "0.0",
            "1",
            "nan",
            "inf",
            "1e400",
            "0x10",
            "\uff11\uff10",
            "²",
            "127.0.0.1:0",
            "[::1]:0",
            "::1:80",
            "a..b:1",
        ]
    )
    | st.floats().map(repr)
    | _address_like.filter(lambda s: not s.startswith("-"))
)


@st.composite
def _argv(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(FLAGS)))
    valued, bare = FLAGS[command]
    argv = [command]
    for _ in range(draw(st.integers(0, 5))):
        if bare and draw(st.booleans()) and draw(st.booleans()):
            argv.append(draw(st.sampled_from(bare)))
        else:
            argv += [draw(st.sampled_from(valued)), draw(_values)]
    return draw(st.sampled_from([[], ["--log-level", "debug"], ["--log-level", "loud"]])) + argv


@FAST
@given(argv=_argv())
def test_cli_parser_accepts_or_exits_2_with_one_line(argv: list[str]) -> None:
    stderr = io.StringIO()
    exit_code: object = None
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            exit_code = exc.code
    message = stderr.getvalue()
    if exit_code is None:
        assert args.command in argv
        assert message == ""
        return
    assert exit_code == 2
    assert message.startswith("trio-tlsecho"), message
    assert ": error: " in message
    assert message.endswith("\n")
    assert message.count("\n") == 1, message


# (command, flag, the config field it fills, how the flag's text is read): the flag and
# the field share one check, so they must accept exactly the same values.
_NUMERIC_FLAGS = [
    ("serve", "--handshake-timeout", "handshake_timeout", float),
    ("serve", "--max-connections", "max_connections", int),
    ("serve", "--shutdown-grace", "shutdown_grace", float),
    ("loadgen", "--clients", "clients", int),
    ("loadgen", "--requests", "requests", int),
    ("loadgen", "--duration", "duration", float),
    ("loadgen", "--rate", "rate", float),
    ("loadgen", "--warmup", "warmup", float),
    ("loadgen", "--timeout", "timeout", float),
]


def _field_accepts(command: str, field: str, value: object) -> bool:
    from trio_tlsecho import LoadConfig

    if command == "serve":
        tls = TLSFiles(cert="server.pem", key="server.key", ca="ca.pem")
        result = value_or_config_error(ServerConfig, tls=tls, **{field: value})
    else:
        client = ClientConfig(tls=TLSFiles(cert="client.pem", key="client.key", ca="ca.pem"))
        result = value_or_config_error(LoadConfig, address="127.0.0.1:1", client=client, **{field: value})
    return not isinstance(result, ConfigError)


@FAST
@given(flag=st.sampled_from(_NUMERIC_FLAGS), text=_values)
@example(flag=_NUMERIC_FLAGS[1], text="1e3")  # a whole number to float(), not to int()
def test_a_flag_accepts_what_its_config_field_accepts(
    flag: tuple[str, str, str, Callable[[str], object]], text: str
) -> None:
    command, option, field, read = flag
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            # --flag=TEXT: a TEXT such as "-0." would otherwise be taken for an option.
            args = build_parser().parse_args([command, f"{option}={text}"])
        except SystemExit:
            args = None
    try:
        value = read(text)
    except ValueError:  # not even a number: the field refuses the text as it is, too
        assert args is None
        assert not _field_accepts(command, field, text)
        return
    assert (args is not None) == _field_accepts(command, field, value)
    if args is not None:
        assert getattr(args, field) == value


# -- echo under random framing (in-memory TLS) ------------------------------------------


def _one_way(rng: random.Random) -> tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
    """A one-way memory stream that delivers what was sent in random-sized pieces."""
    send, receive = trio.testing.MemorySendStream(), trio.testing.MemoryReceiveStream()

    async def some() -> None:
        trio.testing.memory_stream_pump(send, receive, max_bytes=rng.randint(1, 3000))

    def rest() -> None:
        trio.testing.memory_stream_pump(send, receive)
        trio.testing.memory_stream_pump(send, receive)  # the EOF, once the data is through

    send.send_all_hook = some
    send.close_hook = rest
    receive.receive_some_hook = some
    return send, receive


def _pair(rng: random.Random) -> tuple[trio.StapledStream[Any, Any], trio.StapledStream[Any, Any]]:
    a_send, b_receive = _one_way(rng)
    b_send, a_receive = _one_way(rng)
    return trio.StapledStream(a_send, a_receive), trio.StapledStream(b_send, b_receive)


@pytest.fixture(scope="module")
def pipeline(pki: Path) -> tuple[ServerState, ssl.SSLContext]:
    """The server's state as serve() builds it (echo handler), and a client context."""
    server = ServerState.build(ServerConfig(tls=TLSFiles.from_dir(pki, "server")))
    client = client_context(ClientConfig(tls=TLSFiles.from_dir(pki, "client")))
    return server, client


async def _echo_through_tls(
    pipeline: tuple[ServerState, ssl.SSLContext],
    payload: bytes,
    writes: list[int],
    reads: list[int],
    rng: random.Random,
) -> bytes:
    server, client_ctx = pipeline
    client_transport, server_transport = _pair(rng)
    client = trio.SSLStream(client_transport, client_ctx, server_hostname="localhost")
    got = bytearray()

    async def write() -> None:
        at = 0
        for size in writes:  # then the rest in one piece
            await client.send_all(payload[at : at + size])
            at += size
        await client.send_all(payload[at:])

    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            # The real pipeline and handler (handshake, identity, echo until close_notify,
            # close), over memory streams that cut and delay the bytes at random.
            nursery.start_soon(run_connection, server_transport, ("127.0.0.1", 0), server)
            await client.do_handshake()
            # The writer is done before the client closes: with nothing to read back (an
            # empty payload), the reads end at once, and a close then would cut a write.
            async with trio.open_nursery() as talking:
                talking.start_soon(write)
                # Bounded: even one byte per read ends within len(payload) reads.
                for size in itertools.chain(reads, itertools.repeat(65536, len(payload) + 1)):
                    if len(got) >= len(payload):
                        break
                    got += await client.receive_some(size)
            await client.aclose()
    return bytes(got)


@settings(FAST, max_examples=40)
@example(size=0, writes=[0, 0, 0, 0, 0], reads=[], seed=0)  # found once: the close cut a write
@given(
    size=st.sampled_from([0, 1, 16383, 16384, 16385, 65536, 100_003]) | st.integers(0, 150_000),
    writes=st.lists(st.integers(0, 40_000), max_size=12),
    reads=st.lists(st.integers(1, 40_000), max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_echo_returns_exactly_the_bytes_however_they_are_framed(
    pipeline: tuple[ServerState, ssl.SSLContext], size: int, writes: list[int], reads: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(size)
    got = trio.run(_echo_through_tls, pipeline, payload, writes, reads, rng)
    assert got == payload


# -- user mistakes in host names ---------------------------------------------------------

# Host names that Python's IDNA codec refuses before any resolver is asked (empty or
# over-long labels), so these tests send nothing anywhere.
UNENCODABLE_HOSTS = ["a..b", "x" * 64 + ".example", ".leading-dot"]


@pytest.mark.parametrize("host", UNENCODABLE_HOSTS, ids=["empty-label", "64-char-label", "leading-dot"])
def test_listen_on_an_unencodable_host_is_a_one_line_error(server_config: ServerConfig, host: str) -> None:
    # Refused when the config is built, before anything listens or resolves.
    with pytest.raises(ConfigError, match="host") as info:
        attrs.evolve(server_config, listen=[f"{host}:0"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("host", UNENCODABLE_HOSTS, ids=["empty-label", "64-char-label", "leading-dot"])
def test_connect_to_an_unencodable_host_is_a_one_line_error(host: str) -> None:
    # Refused as an address, before any connection is tried.
    with pytest.raises(ConfigError, match="host") as info:
        Address(host, 8443)
    assert "\n" not in str(info.value)


# -- mutated TLS records against a live server --------------------------------------------

FUZZ_CONNECTIONS = 300
FUZZ_BATCH = 10
FUZZ_SEED = 20240404


def _real_hellos(config: ClientConfig) -> list[bytes]:
    """First flights of our real client: TLS 1.3, and capped at TLS 1.2."""
    hellos = []
    for maximum in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_context(config)
        ctx.maximum_version = maximum
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.do_handshake()
        hellos.append(outgoing.read())
    return hellos


def _put(data: bytearray, at: int, value: int, width: int) -> None:
    if at + width <= len(data):
        data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "big")


def _mutations(rng: random.Random) -> list[Callable[[bytes], bytes]]:
    def flip(h: bytes) -> bytes:
        out = bytearray(h)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)

    def record_length(h: bytes) -> bytes:
        out = bytearray(h)
        _put(
            out,
            3,
            rng.choice([0, 1, len(h) - 6, len(h) - 4, 16384, 16385, 18432, 0xFFFF, rng.randrange(1 << 16)]),
            2,
        )
        return bytes(out)

    def handshake_length(h: bytes) -> bytes:
        out = bytearray(h)
        _put(out, 6, rng.choice([0, 1, len(h) - 10, len(h) - 8, 0xFFFFFF, rng.randrange(1 << 24)]), 3)
        return bytes(out)

    def inner_length(h: bytes) -> bytes:
        # Somewhere in the body: session id, suites, extensions -- all length-prefixed.
        out = bytearray(h)
        _put(out, rng.randrange(9, len(h)), rng.choice([0, 1, 0xFF, 0xFFFF, rng.randrange(1 << 16)]), 2)
        return bytes(out)

    def truncate(h: bytes) -> bytes:
        return h[: rng.randrange(1, len(h))]

    def version(h: bytes) -> bytes:
        out = bytearray(h)
        _put(out, rng.choice([1, 9]), rng.choice([0x0002, 0x0300, 0x0301, 0x0304, 0x7F1C, 0xFEFF, 0xFFFF]), 2)
        return bytes(out)

    def content_type(h: bytes) -> bytes:
        return bytes([rng.choice([0, 20, 21, 23, 24, 25, 0x80, 0xFF])]) + h[1:]

    def random_record(_h: bytes) -> bytes:
        length = rng.choice([0, 1, 2, 5, 100, 16384, 16385, 0xFFFF])
        body = rng.randbytes(min(length, rng.randrange(0, 2000)))
        kind = rng.choice([20, 21, 22, 23, 24, rng.randrange(256)])
        return (
            bytes([kind])
            + rng.choice([b"\x03\x01", b"\x03\x03", b"\x03\x04", b"\x00\x00"])
            + length.to_bytes(2, "big")
            + body
        )

    def twice(h: bytes) -> bytes:
        return h + h

    def splice(h: bytes) -> bytes:
        at = rng.randrange(len(h))
        return h[:at] + rng.randbytes(rng.randint(1, 64)) + h[at:]

    def fragment(h: bytes) -> bytes:
        # The same handshake message in two records (legal), but with a damaged second header.
        at = rng.randrange(6, len(h))
        first, rest = h[5:at], h[at:]
        header = bytearray(h[:5])
        _put(header, 3, len(first), 2)
        second = bytearray(h[:5])
        _put(second, 3, len(rest) + rng.choice([-1, 0, 1, 1000]), 2)
        return bytes(header) + first + bytes(second) + rest

    return [
        flip,
        record_length,
        handshake_length,
        inner_length,
        truncate,
        version,
        content_type,
        random_record,
        twice,
        splice,
        fragment,
    ]


async def test_fuzzed_client_hellos_never_crash_or_leak(
    server_config: ServerConfig, client_config: ClientConfig, log: ServerLog
) -> None:
    log.set_level(logging.DEBUG)  # a zero-byte case is logged at DEBUG
    rng = random.Random(FUZZ_SEED)
    hellos = _real_hellos(client_config)
    mutations = _mutations(rng)
    metrics = ServerMetrics()
    serving = True

    async def run_server(task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal serving
        try:
            await serve(server_config, metrics=metrics, task_status=task_status)
        finally:
            serving = False

    ports: list[int] = []

    async def attack(data: bytes) -> None:
        tcp = await trio.open_tcp_stream(address.host, address.port)
        try:
            ports.append(tcp.socket.getsockname()[1])
            with contextlib.suppress(trio.BrokenResourceError):
                await tcp.send_all(data)
                await tcp.send_eof()
            # Ends with the server's FIN (or a reset), never on our timer.
            with trio.fail_after(HANG), contextlib.suppress(trio.BrokenResourceError):
                while await tcp.receive_some(65536):
                    pass
        finally:
            await tcp.aclose()

    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(run_server)
        good = await open_client(address, client_config)
        await good.send_all(b"before")
        assert await good.receive_some(100) == b"before"
        fds = open_fds()
        for _ in range(FUZZ_CONNECTIONS // FUZZ_BATCH):
            async with trio.open_nursery() as batch:
                for _ in range(FUZZ_BATCH):
                    mutate = rng.choice(mutations)
                    data = mutate(rng.choice(hellos))
                    if rng.random() < 0.3 and len(data) > 16:  # sometimes a second one on top
                        data = rng.choice(mutations)(data)
                    batch.start_soon(attack, data)
        assert serving
        await assert_fds_settle(fds)
        await good.send_all(b"after")
        assert await good.receive_some(100) == b"after"
        await good.aclose()
        assert (await echo_once(address, client_config, b"and new")).received == 7
        nursery.cancel_scope.cancel()

    # Every fuzzed connection ended in exactly one handshake outcome, none of them "ok".
    assert metrics.handshakes["ok"] == 2
    assert sum(metrics.handshakes.values()) == FUZZ_CONNECTIONS + 2
    for port in ports:
        [line] = log.about(port)
        assert line.startswith("handshake "), line
    assert not log.problems()
