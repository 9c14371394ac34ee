#!/usr/bin/env python3
"""An independent WebSocket client (the `websockets` package) against peerwire's WebSocket
endpoint: the upgrade and a Hello with a fresh token, then each refusal. Run by
crates/peerwire-cli/tests/ws.rs, which mints the tokens and checks the results and the server's
log. Input on stdin (tokens never in argv): a JSON object with addr, cafile, origin, hello (hex
of an encoded Hello frame) and tokens {good, replayed, forged, expired}. Output on stdout: one
JSON object, case -> "ok", "status NNN", or "error: ...".
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol


def tls_context(cafile):
    """Trusts exactly the device's server certificate (no CA store); the certificate names the
    device, not 127.0.0.1, so the host name is not checked: the pin is."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cafile:
        ctx.load_verify_locations(cafile=cafile)
    return ctx


async def attempt(cfg, token, origin="default", scheme="wss", cafile="default", hello=False):
    uri = f"{scheme}://{cfg['addr']}/peerwire"
    protocols = [Subprotocol("peerwire.v1")]
    if token is not None:
        protocols.append(Subprotocol("peerwire.token." + token))
    kwargs = {
        "subprotocols": protocols,
        "origin": Origin(cfg["origin"]) if origin == "default" else origin,
        "open_timeout": 10,
    }
    if scheme == "wss":
        kwargs["ssl"] = tls_context(cfg["cafile"] if cafile == "default" else cafile)
    try:
        async with connect(uri, **kwargs) as ws:
            if ws.subprotocol != "peerwire.v1":
                return f"error: server chose subprotocol {ws.subprotocol!r}"
            if hello:
                await ws.send(bytes.fromhex(cfg["hello"]))
                answer = await asyncio.wait_for(ws.recv(), 10)
                return "ok " + answer.hex()
            return "ok"
    except InvalidStatus as e:
        return f"status {e.response.status_code}"
    except Exception as e:  # noqa: BLE001 - every other failure is reported as it is
        return f"error: {type(e).__name__}: {e}"


async def main():
    cfg = json.load(sys.stdin)
    t = cfg["tokens"]
    results = {
        "good": await attempt(cfg, t["good"], hello=True),
        "replayed": await attempt(cfg, t["replayed"]),
        "forged": await attempt(cfg, t["forged"]),
        "expired": await attempt(cfg, t["expired"]),
        "no_token": await attempt(cfg, None),
        "wrong_origin": await attempt(cfg, t["spare1"], origin=Origin("https://evil.test")),
        "null_origin": await attempt(cfg, t["spare2"], origin=Origin("null")),
        "no_origin": await attempt(cfg, t["spare3"], origin=None),
        "plain_ws": await attempt(cfg, t["spare4"], scheme="ws"),
        "untrusting": await attempt(cfg, t["spare5"], cafile=None),
    }
    json.dump(results, sys.stdout)


asyncio.run(main())
