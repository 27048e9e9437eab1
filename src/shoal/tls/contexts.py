"""The TLS contexts of the cluster port (mutual TLS).

A client names the server it expects and checks it: ``swarm-manager`` for anything only a manager
answers (sessions, requests to the leader, forwarded writes), ``swarm-ca`` to join, a node ID to read
that node's logs. So a certificate of a worker, valid as it is, cannot pose as a manager.

The server's certificate and trusted root change while it runs (renewal, root rotation): the listening
socket keeps one context whose SNI callback hands each new handshake the current one
(:class:`ServerContexts`), so open connections are left alone and no listener restarts.
"""

from __future__ import annotations

import ssl

from shoal.tls.files import NodeTLS


def _server_context(tls: NodeTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    # checked when sent: a joining node has none yet; every endpoint but /ca and /join requires one
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ServerContexts:
    """The cluster port's TLS: :attr:`context` for the listener, :meth:`reload` after the node's
    certificate or trusted root changed."""

    def __init__(self, tls: NodeTLS) -> None:
        self._tls = tls
        self._current = _server_context(tls)
        self.context = _server_context(tls)
        self.context.sni_callback = self._pick

    def reload(self) -> None:
        self._current = _server_context(self._tls)

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self._current


def client_context(tls: NodeTLS) -> ssl.SSLContext:
    """This node's certificate, trusting its root; the caller names the server to check
    (``server_hostname``)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


def ca_only_context(ca_pem: bytes) -> ssl.SSLContext:
    """Trust exactly this CA (a joining node, before it has a certificate)."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())


def insecure_context() -> ssl.SSLContext:
    """Only for fetching the CA certificate, which is then checked against the join token's digest."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
