"""TLS for the coordinator's gRPC: certificate files read and checked once, and the one function
that opens every client channel.

The token alone travels in plaintext; across nodes the coordinator serves TLS (a certificate and
its key) or mutual TLS (also a client CA: every client must present a certificate it signed). The
token check stays on top of TLS: TLS keeps the token secret and proves the server's identity, the
token authorises each call. Files are read where the configuration is given, so a bad path fails
at once with a :class:`~saga.policy.errors.SagaConfigError` naming the file and the option, and a
:class:`ClientTLS` carries PEM bytes, not paths: it pickles into a Ray actor on another node.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any, Literal, overload

import grpc
import grpc.aio

from saga.policy.errors import SagaConfigError

__all__ = ["CHANNEL_OPTIONS", "ClientTLS", "ServerTLS", "open_channel"]

PathLike = str | os.PathLike[str]

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 50)]
"""Reconnect quickly after a coordinator restart (the client retries meanwhile)."""


def _no_password() -> bytes:
    # Never let OpenSSL prompt on the terminal for an encrypted key's password.
    return b""


def _read(path: PathLike, option: str, marker: bytes) -> bytes:
    """The PEM bytes of ``path``; a SagaConfigError naming ``path`` and ``option`` if they are
    missing, unreadable, or hold no ``marker`` block."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SagaConfigError(f"{option}: cannot read {os.fspath(path)!r} "
                              f"({exc.strerror or exc}); give a readable PEM file") from exc
    if marker not in data:
        what = "certificate" if b"CERTIFICATE" in marker else "private key"
        raise SagaConfigError(f"{option}: {os.fspath(path)!r} holds no PEM {what} "
                              f"('-----BEGIN ...{marker.decode()}-----' block)")
    if b"ENCRYPTED" in data and marker == b"PRIVATE KEY":
        raise SagaConfigError(f"{option}: {os.fspath(path)!r} is an encrypted key, which gRPC "
                              "cannot use; decrypt it: openssl pkey -in KEY -out KEY.plain")
    return data


def _check_pair(cert: PathLike, key: PathLike, cert_option: str, key_option: str,
                purpose: int) -> None:
    """The key must be the certificate's own (OpenSSL checks, as gRPC would at handshake)."""
    ctx = ssl.SSLContext(purpose)
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise SagaConfigError(
                f"{key_option}: the key in {os.fspath(key)!r} does not belong to the "
                f"certificate in {os.fspath(cert)!r} ({cert_option}); give the matching pair"
            ) from exc
        raise SagaConfigError(f"{cert_option} / {key_option}: {os.fspath(cert)!r} and "
                              f"{os.fspath(key)!r} are not a usable certificate and key: {exc}"
                              ) from exc


def _check_ca(path: PathLike, option: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=os.fspath(path))
    except ssl.SSLError as exc:
        raise SagaConfigError(f"{option}: {os.fspath(path)!r} is not a usable CA certificate: "
                              f"{exc}") from exc


@dataclass(frozen=True, repr=False)
class ServerTLS:
    """A coordinator's certificate chain and key, and the client CA when clients must present
    certificates (mutual TLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def load(cls, cert: PathLike, key: PathLike, client_ca: PathLike | None = None
             ) -> ServerTLS:
        """Read and check the files (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``)."""
        cert_opt, key_opt, ca_opt = ("tls_cert (--tls-cert)", "tls_key (--tls-key)",
                                     "tls_client_ca (--tls-client-ca)")
        cert_pem = _read(cert, cert_opt, b"CERTIFICATE")
        key_pem = _read(key, key_opt, b"PRIVATE KEY")
        _check_pair(cert, key, cert_opt, key_opt, ssl.PROTOCOL_TLS_SERVER)
        ca_pem = None
        if client_ca is not None:
            ca_pem = _read(client_ca, ca_opt, b"CERTIFICATE")
            _check_ca(client_ca, ca_opt)
        return cls(cert_pem, key_pem, ca_pem)

    def credentials(self) -> Any:
        """``grpc.ssl_server_credentials`` for ``add_secure_port``."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def __repr__(self) -> str:  # never print a private key
        return f"ServerTLS(mutual={self.mutual})"


@dataclass(frozen=True, repr=False)
class ClientTLS:
    """What a client trusts (``ca``; None: the system's roots) and, for mutual TLS, the
    certificate and key it presents. PEM bytes, so it travels to a Ray actor on any node."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def load(cls, ca: PathLike | None = None, cert: PathLike | None = None,
             key: PathLike | None = None) -> ClientTLS:
        """Read and check the files (``--tls-ca``, ``--tls-client-cert``, ``--tls-client-key``)."""
        ca_opt, cert_opt, key_opt = ("tls_ca (--tls-ca)", "tls_client_cert (--tls-client-cert)",
                                     "tls_client_key (--tls-client-key)")
        if (cert is None) != (key is None):
            raise SagaConfigError(f"give both {cert_opt} and {key_opt} for mutual TLS, or neither")
        ca_pem = cert_pem = key_pem = None
        if ca is not None:
            ca_pem = _read(ca, ca_opt, b"CERTIFICATE")
            _check_ca(ca, ca_opt)
        if cert is not None and key is not None:
            cert_pem = _read(cert, cert_opt, b"CERTIFICATE")
            key_pem = _read(key, key_opt, b"PRIVATE KEY")
            _check_pair(cert, key, cert_opt, key_opt, ssl.PROTOCOL_TLS_CLIENT)
        return cls(ca_pem, cert_pem, key_pem)

    @classmethod
    def from_options(cls, ca: PathLike | None = None, cert: PathLike | None = None,
                     key: PathLike | None = None) -> ClientTLS | None:
        """:meth:`load` when any option is given, else None (a plaintext channel)."""
        if ca is None and cert is None and key is None:
            return None
        return cls.load(ca, cert, key)

    def credentials(self) -> Any:
        """``grpc.ssl_channel_credentials`` for ``secure_channel``."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def __repr__(self) -> str:  # never print a private key
        return f"ClientTLS(ca={self.ca is not None}, client_cert={self.cert is not None})"


@overload
def open_channel(address: str, tls: ClientTLS | None = ..., *,
                 blocking: Literal[False] = ...) -> grpc.aio.Channel: ...


@overload
def open_channel(address: str, tls: ClientTLS | None = ..., *,
                 blocking: Literal[True]) -> grpc.Channel: ...


def open_channel(address: str, tls: ClientTLS | None = None, *, blocking: bool = False) -> Any:
    """A channel to a coordinator: TLS when ``tls`` is given, else plaintext; asyncio unless
    ``blocking``. The certificate must name the host in ``address`` (a DNS or IP SAN)."""
    if tls is None:
        if blocking:
            return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    if blocking:
        return grpc.secure_channel(address, tls.credentials(), options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, tls.credentials(), options=CHANNEL_OPTIONS)
