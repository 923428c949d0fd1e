"""The access line that ends every connection, and the same records as JSON (``--log-format json``)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import signal
import socket
from pathlib import Path

import pytest

from trio_tlsecho import Address, ClientConfig, ClientError, TLSFiles, echo_once
from trio_tlsecho._program import LOG_FIELDS, JSONFormatter, setup_logging

from .logs import ServerLog
from .processes import PY, ServeProcess, run_cli

#: The keys of a verified connection's access line as JSON: the documented set.
VERIFIED_KEYS = {
    "time",
    "level",
    "event",
    "message",
    "peer",
    "subject",
    "fingerprint",
    "tls_version",
    "cipher",
    "outcome",
    "duration_s",
    "bytes_in",
    "bytes_out",
    "connections_open",
}


async def test_a_verified_connection_ends_with_one_access_line(
    server: Address, client_config: ClientConfig, log: ServerLog
) -> None:
    await echo_once(server, client_config, b"hello")
    line = await log.wait_for(" ended ")
    [record] = log.ended()
    assert record.levelno == logging.INFO
    assert re.fullmatch(
        r"127\.0\.0\.1:\d+: ended ok after \d+\.\d{3}s: 5 bytes in, 5 out; TLSv1\.3 subject=.*,CN=client"
        r" sha256=[0-9a-f]{64}; 0 clients connected",
        line,
    ), line
    fields = vars(record)
    assert fields["event"] == "connection_closed"
    assert fields["outcome"] == "ok"
    assert (fields["bytes_in"], fields["bytes_out"]) == (5, 5)
    assert fields["peer"] == line.partition(": ")[0]
    assert fields["fingerprint"] in line
    assert fields["tls_version"] == "TLSv1.3"
    assert fields["connections_open"] == 0
    assert 0 <= fields["duration_s"] < 60
    # The opening line and the access line name the same connection.
    [opened] = [r for r in log.find("connected TLS") if getattr(r, "event", None) == "connection_opened"]
    assert vars(opened)["peer"] == fields["peer"]
    assert vars(opened)["connections_open"] == 1


async def test_a_refused_connection_has_its_access_line_too(
    server: Address, pki: Path, other_pki: Path, log: ServerLog
) -> None:
    stranger = TLSFiles(cert=other_pki / "client.pem", key=other_pki / "client.key", ca=pki / "ca.pem")
    with pytest.raises(ClientError):
        await echo_once(server, ClientConfig(tls=stranger), b"hello")
    line = await log.wait_for(" ended ")
    assert re.fullmatch(
        r"127\.0\.0\.1:\d+: ended unknown_ca after \d+\.\d{3}s: 0 bytes in, 0 out; 0 clients connected", line
    ), line
    [record] = log.ended()
    assert record.levelno == logging.INFO
    assert not hasattr(record, "subject")  # nobody was verified
    [refused] = log.find("handshake failed")
    assert (vars(refused)["event"], vars(refused)["outcome"]) == ("handshake_failed", "unknown_ca")


async def test_json_lines_carry_the_records_fields(
    server: Address, client_config: ClientConfig, log: ServerLog
) -> None:
    await echo_once(server, client_config, b"hello")
    await log.wait_for(" ended ")
    [record] = log.ended()
    line = JSONFormatter().format(record)
    assert "\n" not in line
    got = json.loads(line)
    assert set(got) == VERIFIED_KEYS
    assert set(got) - {"time", "level", "event", "message"} <= set(LOG_FIELDS)
    assert (got["event"], got["level"], got["outcome"]) == ("connection_closed", "info", "ok")
    assert got["message"] == record.getMessage()
    assert (got["bytes_in"], got["bytes_out"]) == (5, 5)
    when = dt.datetime.fromisoformat(got["time"])
    assert when.utcoffset() == dt.timedelta(0)  # RFC 3339 with its zone
    assert abs(when.timestamp() - record.created) < 1e-3


def test_a_record_without_fields_is_a_log_event_with_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("trio_tlsecho", logging.ERROR, __file__, 1, "x %s", ("y",), exc_info=True)
        record.exc_info = __import__("sys").exc_info()
    got = json.loads(JSONFormatter(worker=3).format(record))
    assert (got["event"], got["level"], got["message"], got["worker"]) == ("log", "error", "x y", 3)
    assert "ValueError: boom" in got["traceback"]


def test_setup_logging_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", log_format="json", worker=1)
    logging.getLogger("trio_tlsecho").info(
        "listening on %s", "x", extra={"event": "listening", "address": "x"}
    )
    err = capsys.readouterr().err
    assert json.loads(err) | {"time": None} == {
        "time": None,
        "level": "info",
        "event": "listening",
        "message": "listening on x",
        "worker": 1,
        "address": "x",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_logs_json_with_log_format_json(tmp_path: Path, certs: Path, workers: int) -> None:
    program = (*PY, "--log-format", "json")
    with ServeProcess(
        "--listen",
        "127.0.0.1:0",
        "--workers",
        str(workers),
        "--metrics",
        "127.0.0.1:0",
        cwd=tmp_path,
        program=program,
    ) as server:
        ok = run_cli("client", "--connect", str(server.address), cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        server.stderr.wait_for('"connection_closed"')
        code, err = server.stop(signal.SIGTERM)
    assert code == 0
    lines = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    events = [line["event"] for line in lines]
    for event in ("listening", "connection_opened", "connection_closed", "shutting_down", "stopped"):
        assert event in events, events
    # A log pipeline learns the metrics port too, not only stdout.
    [metrics] = [line for line in lines if line["event"] == "metrics_listening"]
    assert server.metrics_url == f"http://{metrics['address']}/metrics"
    [closed] = [line for line in lines if line["event"] == "connection_closed"]
    assert closed["outcome"] == "ok"
    assert closed["bytes_in"] == closed["bytes_out"] > 0
    if workers > 1:
        assert {line["worker"] for line in lines if line["event"] == "listening"} == {0, 1}


def test_a_fatal_error_is_a_json_line_too(tmp_path: Path, certs: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--log-format", "json", "serve", "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert done.returncode == 2
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert (last["level"], last["event"]) == ("error", "error")
    assert (
        last["message"] == f"trio-tlsecho: error: cannot listen on 127.0.0.1:{port}: address already in use"
    )
