"""`devid token`: verify a session token, print the JWKS, rotate the token-signing key."""

from __future__ import annotations

import binascii
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rich.markup import escape

from devid.authority.token_keys import token_keyring
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, authority, console, read_file
from devid.errors import PolicyError
from devid.tokens import token_policy, verify_token
from devid.tokens.claims import b64url_decode
from devid.tokens.errors import TokenMalformed
from devid.tokens.standing import inactive_reason

app = typer.Typer(
    help="Session tokens: verify one, publish the signing keys, rotate them.", no_args_is_help=True
)


def load_token(value: str) -> str | bytes:
    """A token given as a file (a JWT, or a binary CWT) or on the command line (a JWT, or a CWT in
    hex or base64url)."""
    path = Path(value)
    try:
        from_file = len(value) < 1024 and path.is_file()
    except OSError:
        from_file = False
    data = read_file(path, "token") if from_file else value.encode()
    text = data.strip()
    if text[:3] == b"eyJ" and text.count(b".") == 2:
        return text.decode("ascii", errors="replace")
    if from_file:
        return data
    try:
        return binascii.unhexlify(text)
    except binascii.Error:
        pass
    try:
        return b64url_decode(text.decode("ascii"))
    except (TokenMalformed, UnicodeDecodeError):
        raise TokenMalformed(
            "the token is neither a JWT, a CWT file, nor a CWT in hex or base64url"
        ) from None


def load_certificate(path: Path) -> bytes:
    """A certificate file, PEM or DER, as DER."""
    data = read_file(path, "certificate")
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except ValueError:
        raise PolicyError("bad-certificate", f"{path} is not a PEM or DER X.509 certificate") from None
    return cert.public_bytes(Encoding.DER)


@app.command("verify")
def verify(
    token: Annotated[
        str, typer.Argument(metavar="TOKEN_OR_FILE", help="a JWT, or a file holding a JWT or CWT")
    ],
    audience: Annotated[str, typer.Option("--audience", help="the audience the verifying service is")],
    cert: Annotated[
        Path | None, typer.Option("--cert", help="client certificate the token must be bound to (PEM or DER)")
    ] = None,
    jwks: Annotated[
        Path | None, typer.Option("--jwks", help="JWKS file (else the keys of the devid home)")
    ] = None,
    issuer: Annotated[
        str | None, typer.Option("--issuer", help="expected issuer (default with --home: the home's)")
    ] = None,
    leeway: Annotated[int, typer.Option("--leeway", help="clock skew allowed, seconds")] = 60,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a session token's signature, validity, audience and (with --cert) certificate binding;
    with the home's keys (no --jwks), also whether it is still active: a token whose certificate
    was revoked, or whose device is no longer ACTIVE, is inactive (exit 1)."""
    auth = None
    if jwks is not None and home is not None:
        raise PolicyError("usage", "give --jwks or --home, not both")
    if jwks is not None:
        try:
            document: dict[str, Any] = json.loads(read_file(jwks, "jwks"))
        except ValueError:
            raise PolicyError("bad-jwks", f"{jwks} is not a JSON JWK Set") from None
    else:
        auth = authority(home, passphrase_file)
        document = token_keyring(auth).jwks()
        issuer = issuer or token_policy(auth).issuer
    claims = verify_token(
        load_token(token),
        jwks=document,
        audience=audience,
        client_cert_der=load_certificate(cert) if cert is not None else None,
        leeway=leeway,
        issuer=issuer,
    )
    info = claims.to_json()
    reason = inactive_reason(auth, claims) if auth is not None else None
    if auth is not None:
        info = {"active": reason is None, **({"inactive": reason} if reason else {}), **info}
    if as_json:
        print(json.dumps(info))
    else:
        verdict = f"[bold red]inactive[/] ({reason})" if reason else "[bold green]valid[/]"
        console.print(verdict, highlight=False)
        for key, value in info.items():
            shown = value if not isinstance(value, dict) else " ".join(f"{k}={v}" for k, v in value.items())
            console.print(f"[bold]{key:>6}[/]  {escape(str(shown))}", highlight=False)
    if reason is not None:
        raise typer.Exit(1)


@app.command("jwks")
def jwks_(home: HomeOpt = None, passphrase_file: PassphraseOpt = None) -> None:
    """The JWK Set that verifies devid's session tokens (what /.well-known/jwks.json serves)."""
    print(json.dumps(token_keyring(authority(home, passphrase_file)).jwks(), indent=2))


@app.command("rotate-key")
def rotate_key(home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False) -> None:
    """Sign new tokens with a new key; the old one stays in the JWKS until every token it signed expired."""
    new, retired = token_keyring(authority(home, passphrase_file)).rotate(actor="cli")
    if as_json:
        print(
            json.dumps(
                {
                    "kid": new.kid,
                    "label": new.label,
                    "retired": retired.kid if retired else None,
                    "retired_published_until": str(retired.published_until) if retired else None,
                }
            )
        )
        return
    console.print(f"new token-signing key {new.kid} ({escape(new.label)})", highlight=False)
    if retired is not None:
        console.print(
            f"previous key {retired.kid} stays published until {retired.published_until}", highlight=False
        )
