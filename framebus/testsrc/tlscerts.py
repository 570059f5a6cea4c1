"""Throwaway TLS certificates for mTLS tests, made with the ``openssl`` CLI.

:func:`make_pki` writes into a directory: a CA, one certificate per host (the common name is
the host's name, the host's IP and name are subjectAltNames, usable as TLS server *and*
client, since a zenoh peer both listens and connects), and a certificate with the same kind of
name issued by a *different* CA, which a correctly configured node must refuse.

Keys are ECDSA P-256 in PKCS#8 PEM: fast to make, and what rustls (zenoh's TLS) accepts.
The CLI rather than a Python package keeps the test dependencies as they are; every call is
bounded by a timeout. Debian package: ``openssl``.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Ca", "HostCert", "Pki", "TlsCertError", "make_ca", "make_pki"]

_TIMEOUT: Final = 30.0
_DAYS: Final = "2"  # throwaway: valid long enough for any test run, useless afterwards


class TlsCertError(RuntimeError):
    """An ``openssl`` call failed; the message carries its stderr."""


def _openssl(*args: str, cwd: Path) -> None:
    argv = ["openssl", *args]
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TlsCertError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise TlsCertError(f"{' '.join(argv)}: exit {done.returncode}: {err}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path), cwd=path.parent)
    path.chmod(0o600)


@dataclass(frozen=True)
class HostCert:
    """A host's certificate and private key (PEM files)."""

    common_name: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class Ca:
    """A certificate authority: its certificate (the trust root to hand out) and key."""

    name: str
    cert: Path
    key: Path

    def issue(
        self, common_name: str, *, ips: Sequence[str] = (), dns: Sequence[str] = (),
        stem: str | None = None,
    ) -> HostCert:
        """Issue an end-entity certificate for ``common_name`` with the given SANs.

        Files are ``<stem>.pem`` and ``<stem>.key`` beside the CA's (stem: the common name).
        The common name is always a DNS SAN too, since TLS clients verify SANs, not the CN.
        """
        stem = stem or common_name
        directory = self.cert.parent
        key, csr, cert = (directory / f"{stem}{ext}" for ext in (".key", ".csr", ".pem"))
        ext = directory / f"{stem}.ext"
        sans = [f"DNS:{name}" for name in (common_name, *dns)] + [f"IP:{ip}" for ip in ips]
        ext.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = serverAuth, clientAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid\n"
            f"subjectAltName = {', '.join(sans)}\n"
        )
        _new_key(key)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={common_name}",
                 "-out", str(csr), cwd=directory)
        # A random serial: no serial file to keep, and two CAs never collide on serials.
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-set_serial", str(secrets.randbits(63)), "-days", _DAYS,
                 "-extfile", str(ext), "-out", str(cert), cwd=directory)
        csr.unlink()
        ext.unlink()
        return HostCert(common_name=common_name, cert=cert, key=key)


def make_ca(directory: Path, name: str) -> Ca:
    """Make a self-signed CA named ``name`` as ``<directory>/<name>.pem`` and ``.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _new_key(key)
    _openssl("req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", _DAYS,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(cert), cwd=directory)
    return Ca(name=name, cert=cert, key=key)


@dataclass(frozen=True)
class Pki:
    """What :func:`make_pki` made."""

    ca: Ca  #: the site's CA: its ``cert`` is every node's root_ca_certificate
    hosts: dict[str, HostCert]  #: by common name, issued by ``ca``
    rogue_ca: Ca  #: another CA, trusted by nobody
    rogue: HostCert  #: issued by ``rogue_ca``, with a name the site would otherwise accept


def make_pki(
    directory: Path, hosts: Mapping[str, str], *, rogue_name: str = "framebus-rogue",
    rogue_ip: str | None = None,
) -> Pki:
    """A CA plus one certificate per ``{common_name: ip}``, and a rogue CA's certificate.

    Each CA and its certificates live in their own subdirectory (``ca/``, ``rogue/``).
    """
    ca = make_ca(directory / "ca", "framebus-test-ca")
    issued = {cn: ca.issue(cn, ips=[ip]) for cn, ip in hosts.items()}
    rogue_ca = make_ca(directory / "rogue", "framebus-rogue-ca")
    rogue = rogue_ca.issue(rogue_name, ips=[rogue_ip] if rogue_ip else [])
    return Pki(ca=ca, hosts=issued, rogue_ca=rogue_ca, rogue=rogue)
