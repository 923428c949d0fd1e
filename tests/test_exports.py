"""The public API is exactly what __init__ exports."""

from __future__ import annotations

import types

import trio_tlsecho


def test_all_is_sorted_and_complete() -> None:
    # A public submodule (trio_tlsecho.testing, once imported) is not an export.
    public = {
        name
        for name, value in vars(trio_tlsecho).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(trio_tlsecho.__all__) == trio_tlsecho.__all__
    assert set(trio_tlsecho.__all__) - {"__version__"} == public


def test_exports_are_not_private_modules() -> None:
    for name in trio_tlsecho.__all__:
        obj = getattr(trio_tlsecho, name)
        assert obj is not None
        module = getattr(obj, "__module__", "trio_tlsecho")
        assert module.startswith("trio_tlsecho"), (name, module)


def test_every_listen_kind_is_public() -> None:
    # An embedding app reads serve()'s bound addresses and builds listen= with these.
    config_listen = trio_tlsecho.ServerConfig(
        tls=trio_tlsecho.TLSFiles(cert="c", key="k", ca="a"),
        listen=["127.0.0.1:0", "unix:/run/echo.sock", "systemd:web", "fd://3"],
    ).listen
    kinds = (
        trio_tlsecho.Address,
        trio_tlsecho.UnixAddress,
        trio_tlsecho.SystemdSockets,
        trio_tlsecho.InheritedFd,
    )
    assert [type(spec) for spec in config_listen] == list(kinds)
