"""testssl.sh against the real server: no weak protocol, cipher or known vulnerability.

testssl cannot present a client certificate, but nearly everything it checks
happens before the server asks for one (the CertificateRequest follows the
ServerHello): protocols, every cipher suite, preferences, the certificate the
server presents, and the vulnerability probes.  Checks that need a completed
handshake it reports as WARN ("client x509-based authentication prevents this
from being tested"); those are not findings and are listed, not failed on.

A full default run is ~50 s on 2 cores; the groups below (everything except the
client simulations, which only tell which browser would pick which suite) take
~30 s per engine.  testssl must be installed (Debian: ``apt-get install testssl.sh``; CI does
that in .ci/run): without it this test fails rather than skips, so a missing
tool cannot hide a regression.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .processes import ServeProcess, run_cli
from .tools import require_tool

#: Severities that are findings.  (OK, INFO, DEBUG and WARN are not: WARN means
#: "could not test", which the report lists.)  FATAL means the scan itself broke.
FINDINGS = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "FATAL"}

#: Findings about where the development certificates come from, not about the
#: server's TLS policy; a production deployment with a real PKI answers them there.
PROVENANCE = {
    # The dev CA is private and in no trust store.  We pass it with --add-ca, so this
    # should be OK; listed because a testssl that ignores --add-ca reports "self signed CA
    # in chain" as CRITICAL.
    "cert_chain_of_trust",
    # Neither CRL distribution point nor OCSP URI in the leaf: the dev CA publishes no
    # revocation endpoint.  Our revocation is a local CRL file (serve --crl), which a
    # certificate cannot point to.
    "cert_revocation",
    "cert_crlDistributionPoints",
    "cert_ocspURL",
    # OCSP stapling needs an OCSP responder for the CA: none exists for a dev CA.
    "OCSP_stapling",
    # CAA is a DNS record that restricts *public* CAs for a domain; 127.0.0.1 has no DNS
    # name to hold one, and we tell testssl not to look (--nodns none).
    "DNS_CAArecord",
}

#: Checks that must appear in the report, or the scan did not really run.
EXPECTED = {
    "SSLv2",
    "SSLv3",
    "TLS1",
    "TLS1_1",
    "TLS1_2",
    "TLS1_3",
    "cipherlist_NULL",
    "cipherlist_3DES_IDEA",
    "cipher_order",
    "cert_chain_of_trust",
    "heartbleed",
    "CCS",
    "ROBOT",
    "secure_renego",
    "CRIME_TLS",
    "POODLE_SSL",
    "SWEET32",
    "FREAK",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
}

TESTSSL_TIMEOUT = 240


def find_testssl() -> str:
    # Debian names it testssl; upstream calls it testssl.sh.
    return shutil.which("testssl.sh") or require_tool("testssl", "testssl.sh")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["trio", "socket"])
def test_testssl_finds_nothing_but_dev_ca_provenance(tmp_path: Path, pki: Path, engine: str) -> None:
    # Both engines share one SSLContext policy, but not the code that meets testssl's
    # malformed probes (heartbleed, CCS injection, renegotiation): each must survive them.
    testssl = find_testssl()
    with ServeProcess(
        "--listen", "127.0.0.1:0", "--certs", str(pki), "--engine", engine, cwd=tmp_path
    ) as server:
        target = str(server.address)
        report = tmp_path / "testssl.json"
        scan = subprocess.run(
            [
                testssl,
                "--quiet",
                "--color",
                "0",
                "--warnings",
                "off",
                "--nodns",
                "none",
                "--ip",
                "127.0.0.1",
                "--add-ca",
                str(pki / "ca.pem"),
                "--jsonfile",
                str(report),
                # protocols, cipher categories, forward secrecy, preferences, server
                # defaults (certificate), all vulnerabilities, each cipher
                *("-p", "-s", "-f", "-P", "-S", "-U", "-e"),
                target,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TESTSSL_TIMEOUT,
        )
        assert report.exists(), (
            f"testssl wrote no report (exit {scan.returncode}):\n{scan.stdout}{scan.stderr}"
        )
        findings = json.loads(report.read_text())

        # The server survived the scan and still serves a verified client.
        assert server.proc.poll() is None, "\n".join(server.stderr.seen)
        client = run_cli("client", "--connect", target, "--certs", str(pki))
        assert client.returncode == 0, client.stderr
        code, log = server.stop()

    ids = {f["id"] for f in findings}
    assert ids >= EXPECTED, f"the scan skipped checks: {sorted(EXPECTED - ids)}"
    assert ids & {"FS", "PFS"}, "the scan skipped the forward secrecy check"  # PFS before 3.2
    problems = [
        f"{f['id']} ({f['severity']}): {f['finding']}"
        for f in findings
        if f["severity"] in FINDINGS and f["id"] not in PROVENANCE
    ]
    assert not problems, "testssl findings:\n" + "\n".join(problems)
    not_tested = [f"{f['id']}: {f['finding']}" for f in findings if f["severity"] == "WARN"]
    if not_tested:
        print("testssl could not test (mTLS):", *not_tested, sep="\n  ")
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert code == 0, log
