"""A contract manufacturer's PKI made entirely with the `openssl` command line, outside devid:
a root CA, an intermediate signing CA, verification certificates and device IDevIDs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


def openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(map(str, args))}: {result.stderr.decode()}"


_CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
_LEAF_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"


@dataclass
class Manufacturer:
    """Files of one manufacturer's PKI under `directory`."""

    directory: Path
    name: str = "Acme"

    def __post_init__(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.ext").write_text(_CA_EXT)
        (d / "leaf.ext").write_text(_LEAF_EXT)
        self.key("root")
        openssl(
            "req", "-x509", "-new", "-key", "root.key", "-subj", f"/O={self.name}/CN={self.name} Root CA",
            "-days", "7300", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "root.pem", cwd=d,
        )  # fmt: skip
        self.sign("signing", f"/O={self.name}/CN={self.name} Device Signing CA", "root", ca=True)

    def key(self, name: str, rsa: bool = False) -> Path:
        if rsa:
            openssl("genrsa", "-out", f"{name}.key", "2048", cwd=self.directory)
        else:
            openssl(
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                f"{name}.key",
                cwd=self.directory,
            )
        return self.directory / f"{name}.key"

    def sign(
        self, name: str, subject: str, issuer: str, *, ca: bool = False, rsa: bool = False, days: int = 3650
    ) -> Path:
        """A new key `<name>.key` and certificate `<name>.pem` for `subject`, signed by `issuer`."""
        self.key(name, rsa)
        d = self.directory
        openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=d)
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
            "-set_serial", str(abs(hash((name, subject))) % 10**15 + 1), "-days", str(days),
            "-extfile", "ca.ext" if ca else "leaf.ext", "-out", f"{name}.pem", cwd=d,
        )  # fmt: skip
        return d / f"{name}.pem"

    def verification(self, code: str, issuer: str = "root") -> Path:
        """A verification certificate whose CN is `code`, signed by `issuer`'s key."""
        return self.sign(f"verify-{issuer}", f"/CN={code}", issuer)

    def device(self, serial: str, issuer: str = "signing") -> tuple[Path, Path, Path]:
        """An IDevID for `serial` (subject serialNumber, as 802.1AR asks): (cert, key, chain) files,
        the chain file holding the device certificate and the signing CA (what a device sends)."""
        cert = self.sign(f"dev-{serial}", f"/O={self.name}/serialNumber={serial}/CN=Sensor", issuer)
        chain = self.directory / f"dev-{serial}-chain.pem"
        chain.write_bytes(cert.read_bytes() + (self.directory / f"{issuer}.pem").read_bytes())
        return cert, self.directory / f"dev-{serial}.key", chain

    def pem(self, name: str) -> bytes:
        return (self.directory / f"{name}.pem").read_bytes()

    def certificate(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pem(name))
