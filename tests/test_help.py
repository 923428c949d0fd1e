"""--help answers: a description and examples for each command, the installed handlers,
every certificate flag in one group."""

from __future__ import annotations

import argparse

import pytest

from trio_tlsecho import handler_names
from trio_tlsecho._cli import build_parser, main


def help_text(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _commands() -> list[list[str]]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [[], *([name] for name in sub.choices)]


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "top")
def test_every_command_has_a_description_and_examples(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    text = help_text(capsys, *command)
    description = text.split("\n\n")[1]  # after the usage
    assert not description.startswith(("options:", "positional"))
    assert len(description.split()) > 5
    examples = text.split("\nexamples:\n", 1)[1]
    assert examples.startswith("  trio-tlsecho ")


def test_serve_help_lists_the_installed_handlers_and_groups_the_certificate_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_text(capsys, "serve")
    assert f"one installed ({', '.join(handler_names())})" in " ".join(text.split())
    certificates = text.split("\ncertificates:\n", 1)[1].split("\n\n", 1)[0]
    for flag in ("--certs", "--cert", "--key", "--ca", "--crl", "--keylog"):
        assert f"  {flag} " in certificates
    environment = " ".join(text.split("\nenvironment ", 1)[1].split())
    assert "TRIO_TLSECHO_LISTEN" in environment
    assert "TRIO_TLSECHO_LOG_LEVEL" in environment
