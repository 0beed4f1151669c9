"""Self-signed application certificate for the OPC-UA client (``edge-agent opcua gen-cert``).

OPC-UA servers identify a client application by the *applicationUri* in its certificate's
subjectAltName; it must equal the client's ``application_uri`` setting (the driver's default is
:data:`DEFAULT_APPLICATION_URI`). After generating, copy the certificate into the server's
trusted-client store (most servers put a rejected certificate into a "rejected" folder first:
move it to "trusted"). The private key is written with mode 0600.

Equivalent OpenSSL steps, for sites that must create the pair themselves::

    openssl req -x509 -newkey rsa:2048 -sha256 -days 730 -nodes \\
      -keyout client-key.pem -out client-cert.pem -subj "/CN=edge-agent" \\
      -addext "subjectAltName=URI:urn:edge-gateway-agent:client,DNS:$(hostname)" \\
      -addext "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,\\
dataEncipherment" \\
      -addext "extendedKeyUsage=clientAuth"
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

DEFAULT_APPLICATION_URI = "urn:edge-gateway-agent:client"


def generate_client_certificate(cert_path: Path, key_path: Path, application_uri: str,
                                hostname: str, *, days: int = 730,
                                common_name: str = "edge-gateway-agent",
                                server: bool = False) -> None:
    """Write a self-signed RSA-2048/SHA-256 certificate and its unencrypted private key.

    The certificate is DER unless ``cert_path`` ends in ``.pem``; the key is PEM (PKCS#8). The
    subjectAltName carries ``application_uri`` (required by OPC-UA) and ``hostname`` (as an IP
    address when it is one). ``server=True`` adds serverAuth usage (test servers).
    """
    if not application_uri:
        raise ValueError("application_uri is required (it goes into subjectAltName)")
    key = generate_private_key()
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    if hostname:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(hostname)))
        except ValueError:
            san.append(x509.DNSName(hostname))
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = generate_self_signed_app_certificate(key, common_name, {}, san, usage, days=days)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    encoding = Encoding.PEM if cert_path.suffix.lower() == ".pem" else Encoding.DER
    cert_path.write_bytes(cert.public_bytes(encoding))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(dump_private_key_as_pem(key))
    os.chmod(key_path, 0o600)
