"""CurveZMQ on a socket, keys from zmq.auth certificate files."""

from __future__ import annotations

import logging

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from lobstream.engine.config import ConfigError, CurveConfig

logger = logging.getLogger(__name__)


def _load(path: str, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{what} {path}: cannot load a CurveZMQ certificate ({exc}); create one with "
            "zmq.auth.create_certificates(folder, name)"
        ) from None
    if secret and sec is None:
        raise ConfigError(
            f"{what} {path} holds only a public key; give the '.key_secret' file here"
        )
    return public, sec


def setup_curve(
    ctx: zmq.Context, sock: zmq.Socket, cfg: CurveConfig, server: bool
) -> ThreadAuthenticator | None:
    """Turn CurveZMQ on for ``sock`` when ``cfg.secret_key`` is set (before bind/connect).

    The binding side is the Curve server; with ``authorized_keys`` only clients whose public
    certificates are in that folder are let in (a ZAP authenticator thread with its own socket).
    The connecting side is the client and needs the server's public certificate.

    Returns
    -------
    ThreadAuthenticator or None
        The authenticator to stop at shutdown, when one was started.
    """
    if not cfg.secret_key:
        return None
    public, secret = _load(cfg.secret_key, "curve secret_key", secret=True)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    if not server:
        if not cfg.server_public_key:
            raise ConfigError(
                "curve: a connecting socket needs server_public_key (the peer's certificate)"
            )
        sock.curve_serverkey = _load(cfg.server_public_key, "curve server_public_key", False)[0]
        return None
    sock.curve_server = True
    if not cfg.authorized_keys:
        logger.warning("CurveZMQ server without authorized_keys: any client key is accepted")
        return None
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=cfg.authorized_keys)
    return auth
