"""Credentials for a local deployment that is secure by default: a self-signed CA, a SuperLink certificate
for 127.0.0.1 signed by it (TLS on every SuperLink connection), and one key pair per SuperNode (Flower's
CLI-managed SuperNode authentication: only registered public keys may connect).

Everything is made with the `cryptography` library into <state>/credentials/ (keys readable by the owner
only), fresh for every `up`: nothing outside the deployment folder is trusted or touched.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAYS = 30


@dataclass
class Credentials:
    ca: Path  # the CA certificate every party verifies the SuperLink against
    server_cert: Path
    server_key: Path
    node_keys: list[Path]  # per SuperNode: its private key (OpenSSH); the public key beside it (.pub)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make(folder: Path, nodes: int) -> Credentials:
    """A CA, a SuperLink certificate for 127.0.0.1 / localhost, and `nodes` SuperNode key pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=DAYS)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("sfedlora local CA")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
                   .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    creds = Credentials(ca=_write(folder / "ca.crt", ca_cert.public_bytes(pem)),
                        server_cert=_write(folder / "server.pem", server_cert.public_bytes(pem)),
                        server_key=_write(folder / "server.key", _pem_key(server_key), private=True), node_keys=[])
    _write(folder / "ca.key", _pem_key(ca_key), private=True)
    for i in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        creds.node_keys.append(_write(folder / f"supernode-{i}", private, private=True))
        _write(folder / f"supernode-{i}.pub", public + b"\n")
    return creds
