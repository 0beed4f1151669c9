"""DataValue → records: quality, timestamps, waveforms (pure functions); certificate helper."""

from __future__ import annotations

import socket
import stat
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from asyncua import ua
from asyncua.crypto import uacrypto
from cryptography import x509

from edge_agent.drivers.opcua_certs import DEFAULT_APPLICATION_URI, generate_client_certificate
from edge_agent.drivers.opcua_convert import (
    NodeSpec,
    WaveformError,
    quality_of,
    timestamp_of,
    to_rate,
    to_reading,
    to_waveform,
)
from tests.drivers.opcua_server import ua_time

SPEC = NodeSpec("p1.temp", "temperature", "degC", "ns=2;s=T")
T_SRC = datetime(2026, 11, 27, 10, 15, 1, 250000, tzinfo=UTC)
T_SRV = datetime(2026, 11, 27, 10, 15, 2, tzinfo=UTC)


def dv(value: object, status: int = 0, src: datetime | None = None,
       srv: datetime | None = None) -> ua.DataValue:
    variant = ua.Variant(value, ua.VariantType.Double) if value == [] else ua.Variant(value)
    return ua.DataValue(variant, StatusCode=ua.StatusCode(ua.UInt32(status)),
                        SourceTimestamp=None if src is None else ua_time(src),
                        ServerTimestamp=None if srv is None else ua_time(srv))


def test_quality_mapping() -> None:
    assert quality_of(ua.StatusCode(ua.UInt32(ua.StatusCodes.Good))) == 1.0
    assert quality_of(ua.StatusCode(ua.UInt32(ua.StatusCodes.UncertainSensorNotAccurate))) == 0.5
    assert quality_of(ua.StatusCode(ua.UInt32(ua.StatusCodes.BadCommunicationError))) == 0.0
    assert quality_of(None) == 1.0


def test_timestamp_source_then_server_then_local() -> None:
    assert timestamp_of(dv(1.0, src=T_SRC, srv=T_SRV), 5.0) == (T_SRC.timestamp(), "source")
    assert timestamp_of(dv(1.0, srv=T_SRV), 5.0) == (T_SRV.timestamp(), "server")
    assert timestamp_of(dv(1.0), 5.0) == (5.0, "local")
    naive_1601 = datetime(1601, 1, 1)  # OPC-UA "no timestamp"
    assert timestamp_of(dv(1.0, src=naive_1601, srv=T_SRV.replace(tzinfo=None)), 5.0) == (
        T_SRV.timestamp(), "server")


def test_readings_good_uncertain_bad_and_unusable() -> None:
    r = to_reading(SPEC, dv(61.25, src=T_SRC), 0.0)
    assert (r.value, r.quality, r.timestamp) == (61.25, 1.0, T_SRC.timestamp())
    assert r.metadata == {"source": "opcua", "node": "ns=2;s=T", "status": "Good",
                          "ts_source": "source"}
    r = to_reading(SPEC, dv(7, ua.StatusCodes.UncertainLastUsableValue), 0.0)
    assert r.value == 7.0 and r.quality == 0.5
    assert r.metadata["status"] == "UncertainLastUsableValue"
    r = to_reading(SPEC, dv(99.0, ua.StatusCodes.BadSensorFailure, srv=T_SRV), 0.0)
    assert r.value is None and r.quality == 0.0 and r.timestamp == T_SRV.timestamp()
    assert r.metadata["status"] == "BadSensorFailure"
    assert r.metadata["reason"] == "status BadSensorFailure"
    assert to_reading(SPEC, dv(True), 0.0).value == 1.0
    for value, why in (("abc", "non-numeric"), ([1.0, 2.0], "array value"),
                       (float("nan"), "non-finite"), (None, "no value")):
        r = to_reading(SPEC, dv(value), 0.0)
        assert r.value is None and r.quality == 0.0 and why in r.metadata["reason"], value


def test_waveform_shapes_rate_and_start() -> None:
    spec = NodeSpec("p1.vib", "vibration", "g", "ns=2;s=V", waveform=True, channels=("h", "v"))
    data = [float(i) for i in range(8)]
    w = to_waveform(spec, dv(data, src=T_SRC), 1000.0, 0.0)
    assert w.samples.shape == (4, 2) and w.samples.dtype == np.float64
    np.testing.assert_array_equal(w.samples[:, 0], [0, 2, 4, 6])
    assert w.channels == ("h", "v") and w.sample_rate == 1000.0
    assert w.start == pytest.approx(T_SRC.timestamp() - 4 / 1000.0)  # stamp marks the end
    assert w.end == pytest.approx(T_SRC.timestamp())   # of the block: one period after the last
    start_spec = NodeSpec("p1.vib", "vibration", "g", "n", True, ("x",), timestamp_at="start")
    assert to_waveform(start_spec, dv(data, src=T_SRC), 8.0, 0.0).start == T_SRC.timestamp()
    assert to_waveform(spec, dv(data, ua.StatusCodes.UncertainInitialValue), 10.0,
                       0.0).metadata["quality"] == 0.5
    for value, rate, why in (([1.0, 2.0, 3.0], 10.0, "does not split"),
                             (data, None, "sample rate"), (data, -1.0, "sample rate"),
                             (3.0, 10.0, "expected an array"), ([], 10.0, "does not split"),
                             ([1.0, float("inf")], 10.0, "NaN or Inf"),
                             (["a", "b"], 10.0, "not numeric")):
        with pytest.raises(WaveformError, match=why):
            to_waveform(spec, dv(value), rate, 0.0)
    with pytest.raises(WaveformError, match="BadOutOfService"):
        to_waveform(spec, dv(data, ua.StatusCodes.BadOutOfService), 10.0, 0.0)


def test_rate_values() -> None:
    assert to_rate(dv(25600.0)) == 25600.0
    assert to_rate(dv(0.0)) is None
    assert to_rate(dv(100.0, ua.StatusCodes.BadNoData)) is None
    assert to_rate(dv("fast")) is None


def test_generated_certificate_has_uri_san_and_private_key(tmp_path: Path) -> None:
    cert_p, key_p = tmp_path / "pki" / "cert.der", tmp_path / "pki" / "key.pem"
    host = socket.gethostname()
    generate_client_certificate(cert_p, key_p, DEFAULT_APPLICATION_URI, host)
    cert = x509.load_der_x509_certificate(cert_p.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [DEFAULT_APPLICATION_URI]
    assert san.get_values_for_type(x509.DNSName) == [host]
    assert uacrypto.check_certificate(cert, DEFAULT_APPLICATION_URI, host) is False  # no errors
    assert stat.S_IMODE(key_p.stat().st_mode) == 0o600
    assert key_p.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    generate_client_certificate(tmp_path / "c.pem", tmp_path / "k.pem", "urn:x", "10.0.0.5")
    pem = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    ips = pem.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in ips.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    with pytest.raises(ValueError, match="application_uri"):
        generate_client_certificate(tmp_path / "a", tmp_path / "b", "", host)
