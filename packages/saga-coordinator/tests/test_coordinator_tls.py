"""The coordinator over TLS and mutual TLS, with certificates this module makes (a CA, a server
certificate for 127.0.0.1 and localhost, client certificates): real servers and clients on
loopback, the token still checked, and bad certificate files refused by name."""

from __future__ import annotations

import datetime
import ipaddress
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from saga.cli.main import app
from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator._proto import saga_coordinator_pb2_grpc as pb_grpc
from saga.coordinator.bench import start_server_process
from saga.coordinator.client import CoordinatorClient, CoordinatorUnavailable, WorkerClient
from saga.coordinator.serve import TOKEN_ENV
from saga.coordinator.server import CoordinatorServer, ServerConfig, bearer
from saga.coordinator.testing import TOKEN, coordinator, run
from saga.coordinator.tls import ClientTLS, ServerTLS, open_channel
from saga.policy.errors import SagaConfigError


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server pair signed by it, a client pair signed by it, and a client
    pair signed by another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           usage: x509.ObjectIdentifier | None = None,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``cn``: a self-signed CA when ``issuer`` is None, else a leaf."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:
        b = b.issuer_name(_name(cn)).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True)
        return b.sign(key, hashes.SHA256()), key
    b = b.issuer_name(issuer[0].subject).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer[1], hashes.SHA256()), key


def _write(d: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
           ) -> tuple[Path, Path]:
    c, k = d / f"{name}.crt", d / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _issue("saga test CA", None)
    other_ca = _issue("another CA", None)
    ca_path, _ = _write(d, "ca", *ca)
    other_ca_path, _ = _write(d, "other-ca", *other_ca)
    server = _write(d, "server", *_issue("saga coordinator", ca, ExtendedKeyUsageOID.SERVER_AUTH))
    client = _write(d, "client", *_issue("worker", ca, ExtendedKeyUsageOID.CLIENT_AUTH))
    other = _write(d, "other", *_issue("stranger", other_ca, ExtendedKeyUsageOID.CLIENT_AUTH))
    return Pki(ca_path, *server, *client, other_ca_path, *other)


def _tls_server(pki: Pki, mutual: bool = False) -> dict[str, Any]:
    return {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key),
            "tls_client_ca": str(pki.ca) if mutual else None}


async def _ping_code(address: str, tls: ClientTLS | None, token: str = TOKEN
                     ) -> grpc.StatusCode:
    """OK, or the status of one Ping (no retries)."""
    async with open_channel(address, tls) as channel:
        stub = pb_grpc.CoordinatorStub(channel)  # type: ignore[no-untyped-call]
        try:
            await stub.Ping(pb.PingRequest(), metadata=bearer(token), timeout=3.0)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_tls_server_serves_route_and_observe_to_a_tls_client(pki: Pki) -> None:
    tls = ClientTLS.load(pki.ca)

    async def body() -> None:
        async with coordinator(tls=tls, **_tls_server(pki)) as (server, client):
            assert server.address.startswith("127.0.0.1:")
            worker = WorkerClient(server.address, TOKEN, "w0", slots=4, tls=tls)
            await worker.start(timeout_s=10)
            reply = await client.route("s1", "tenant")
            assert reply.worker_id == "w0" and reply.coordinator_id == server.coordinator_id
            worker.observe(pb.Observation(session_id="s1", kind=pb.CALL_START,
                                          prompt_tokens=10))
            worker.observe(pb.Observation(session_id="s1", kind=pb.CALL_END, prompt_tokens=10,
                                          output_tokens=2, cached_tokens=4))
            await worker.flush()
            assert worker.acked == 2 and worker.rejected == []
            assert server.core.observations == 2
            await worker.stop()
    run(body, timeout_s=30)


def test_plaintext_client_fails_clearly_and_the_tls_server_keeps_serving(pki: Pki) -> None:
    async def body() -> None:
        async with coordinator(tls=ClientTLS.load(pki.ca), **_tls_server(pki)) as (server,
                                                                                  client):
            assert await _ping_code(server.address, None) == grpc.StatusCode.UNAVAILABLE
            plain = CoordinatorClient(server.address, TOKEN, retry_s=0.3)
            with pytest.raises(CoordinatorUnavailable, match=r"UNAVAILABLE.*--tls-ca"):
                await plain.stats()
            await plain.close()
            # A client that trusts another CA does not get through either.
            stranger = ClientTLS.load(pki.other_ca)
            assert await _ping_code(server.address, stranger) == grpc.StatusCode.UNAVAILABLE
            assert (await client.stats()).coordinator_id == server.coordinator_id
        # The reverse mismatch: a TLS client against a plaintext coordinator.
        async with coordinator() as (plain_server, _):
            code = await _ping_code(plain_server.address, ClientTLS.load(pki.ca))
            assert code == grpc.StatusCode.UNAVAILABLE
    run(body, timeout_s=30)


def test_token_is_still_checked_over_tls(pki: Pki) -> None:
    tls = ClientTLS.load(pki.ca)

    async def body() -> None:
        async with coordinator(tls=tls, **_tls_server(pki)) as (server, _):
            assert await _ping_code(server.address, tls, "wrong") == \
                grpc.StatusCode.UNAUTHENTICATED
            assert await _ping_code(server.address, tls) == grpc.StatusCode.OK
            assert ('saga_coordinator_rejected_total{status="unauthenticated"} 1.0'
                    in server.metrics_text())
    run(body, timeout_s=30)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: Pki) -> None:
    async def body() -> None:
        async with coordinator(tls=ClientTLS.load(pki.ca, pki.client_cert, pki.client_key),
                               **_tls_server(pki, mutual=True)) as (server, client):
            addr = server.address
            assert await _ping_code(addr, ClientTLS.load(pki.ca)) == \
                grpc.StatusCode.UNAVAILABLE
            stranger = ClientTLS.load(pki.ca, pki.other_client_cert, pki.other_client_key)
            assert await _ping_code(addr, stranger) == grpc.StatusCode.UNAVAILABLE
            assert (await client.stats()).coordinator_id == server.coordinator_id
            worker = WorkerClient(addr, TOKEN, "w0",
                                  tls=ClientTLS.load(pki.ca, pki.client_cert, pki.client_key))
            await worker.start(timeout_s=10)
            assert (await client.route("s", "t")).worker_id == "w0"
            await worker.stop()
    run(body, timeout_s=30)


def test_bad_certificate_files_are_refused_by_name(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")

    def refused(match: str, **files: str) -> None:
        server = CoordinatorServer(ServerConfig(token=TOKEN, **files))  # type: ignore[arg-type]
        with pytest.raises(SagaConfigError, match=match):
            run(server.start)
        assert server._server is None            # nothing was bound

    key, cert = str(pki.server_key), str(pki.server_cert)
    q = {name: re.escape(f"'{p}'") for name, p in
         (("missing", missing), ("junk", junk), ("ckey", pki.client_key), ("cert", cert))}
    refused(rf"tls_cert \(--tls-cert\): cannot read {q['missing']}", tls_cert=str(missing),
            tls_key=key)
    refused(rf"--tls-key.*{q['junk']} holds no PEM private key", tls_cert=cert, tls_key=str(junk))
    refused(rf"--tls-key.*the key in {q['ckey']} does not belong to the certificate in "
            rf"{q['cert']}", tls_cert=cert, tls_key=str(pki.client_key))
    refused(rf"--tls-cert.*{q['junk']} holds no PEM certificate", tls_cert=str(junk),
            tls_key=key)
    refused(rf"--tls-client-ca.*cannot read {q['missing']}", tls_cert=cert, tls_key=key,
            tls_client_ca=str(missing))
    with pytest.raises(SagaConfigError, match=r"--tls-cert.*--tls-key"):
        ServerConfig(token=TOKEN, tls_cert=cert)
    with pytest.raises(SagaConfigError, match="--tls-client-ca"):
        ServerConfig(token=TOKEN, tls_client_ca=str(pki.ca))
    with pytest.raises(SagaConfigError, match=rf"--tls-ca.*cannot read {q['missing']}"):
        ClientTLS.load(missing)
    with pytest.raises(SagaConfigError, match=r"--tls-client-cert.*--tls-client-key"):
        ClientTLS.load(pki.ca, pki.client_cert)
    assert "PRIVATE" not in repr(ServerTLS.load(cert, key))


def test_serve_process_with_tls_and_the_cli_refuses_a_bad_path(pki: Pki, tmp_path: Path
                                                                ) -> None:
    proc, address = start_server_process("tok", tls_cert=str(pki.server_cert),
                                         tls_key=str(pki.server_key))
    try:
        async def body() -> None:
            assert await _ping_code(address, ClientTLS.load(pki.ca), "tok") == \
                grpc.StatusCode.OK
            assert await _ping_code(address, None, "tok") == grpc.StatusCode.UNAVAILABLE
        run(body, timeout_s=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    res = CliRunner(env={"COLUMNS": "250", TOKEN_ENV: "tok"}).invoke(app, [
        "coordinator", "serve", "--port", "0", "--tls-cert", str(tmp_path / "gone.crt"),
        "--tls-key", str(pki.server_key)])
    assert res.exit_code == 2
    assert "--tls-cert" in res.output and "gone.crt" in res.output
