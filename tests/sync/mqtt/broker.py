"""A real Mosquitto on loopback for the MQTT tests: plain, password and TLS listeners.

Mosquitto comes from Debian (``apt-get install mosquitto``; ``make test`` installs it). The TLS
listener uses a CA and a server certificate made here with ``cryptography``; the password file is
made with ``mosquitto_passwd``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
USER, PASSWORD = "edge", "s3cret-pw"


def require_mosquitto() -> None:
    missing = [p for p in (MOSQUITTO, MOSQUITTO_PASSWD) if not Path(p).exists()]
    if missing:
        raise RuntimeError(
            f"the MQTT tests need Mosquitto ({', '.join(missing)} missing): "
            "apt-get install -y mosquitto (make test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(where: Path, ca_name: str = "edge test CA") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca.pem, server.pem, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(san, critical=False)
            .sign(ca_key, hashes.SHA256()))
    where.mkdir(parents=True, exist_ok=True)
    paths = where / "ca.pem", where / "server.pem", where / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


@dataclass
class Mosquitto:
    """A Mosquitto process with three listeners; can be stopped and started on the same ports."""

    workdir: Path
    port: int = 0  # anonymous
    auth_port: int = 0  # password
    tls_port: int = 0  # TLS + password
    proc: subprocess.Popen[bytes] | None = None
    nodelay: bool = True  # Mosquitto's set_tcp_nodelay (its default is false)

    def __post_init__(self) -> None:
        require_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.auth_port, self.tls_port = free_port(), free_port(), free_port()
        self.ca, cert, key = make_pki(self.workdir / "pki")
        pw = self.workdir / "passwd"
        subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(pw), USER, PASSWORD], check=True,
                       capture_output=True)
        pw.chmod(0o600)
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            # As root, Mosquitto would switch to user "mosquitto", who cannot read tmp_path.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "per_listener_settings true\npersistence false\nlog_dest stderr\n"
            # A slow test subscriber must not lose messages (the default drops beyond 1000).
            "max_queued_messages 0\n"
            f"set_tcp_nodelay {'true' if self.nodelay else 'false'}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.auth_port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {pw}\n"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {pw}\ncafile {self.ca}\ncertfile {cert}\nkeyfile {key}\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.workdir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log,
                                     stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited: "
                                   + (self.workdir / "mosquitto.log").read_text()[-2000:])
            try:
                for p in (self.port, self.auth_port, self.tls_port):
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None
