"""The PEM files one side of a mutual-TLS connection needs."""

from __future__ import annotations

from pathlib import Path

import attrs


def _to_path(value: str | Path) -> Path:
    return Path(value)


@attrs.frozen
class TLSFiles:
    """PEM files: our certificate chain, its private key, and the CA we trust for peers."""

    cert: Path = attrs.field(converter=_to_path)
    key: Path = attrs.field(converter=_to_path)
    ca: Path = attrs.field(converter=_to_path)

    @classmethod
    def from_dir(cls, directory: str | Path, name: str) -> TLSFiles:
        """The layout ``certs`` writes: ``NAME.pem``, ``NAME.key`` and ``ca.pem``."""
        d = Path(directory)
        return cls(cert=d / f"{name}.pem", key=d / f"{name}.key", ca=d / "ca.pem")
