"""A tiny reference signer (eth-account behind http.server) speaking the same JSON-RPC subset
as keyguard's EVM listener. Only used by test_helpers_selfcheck.py, to validate the client
plumbing (web3.py, viem) and the verifier independently of the daemon."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from eth_account import Account
from eth_utils import keccak

import kg


class FakeSigner:
    def __init__(self, account, chain_id: int = 31337, response: str = "raw"):
        self.account = account
        self.chain_id = chain_id
        self.response = response
        self.requests: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                msg = json.loads(body)
                outer.requests.append(msg)
                out = json.dumps(outer.handle(msg)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, msg: dict) -> dict:
        m, p = msg["method"], msg.get("params") or []
        if m == "eth_chainId":
            res = hex(self.chain_id)
        elif m == "eth_accounts":
            res = [self.account.address]
        elif m == "eth_signTransaction":
            tx = {k: v for k, v in p[0].items() if v is not None}
            tx.pop("from", None)
            if "input" in tx:
                tx["data"] = tx.pop("input")
            t = tx.pop("type", None)
            et = kg.request_to_eth_account(tx)
            if t is not None and int(t, 16) == 2:
                et.setdefault("accessList", [])
            signed = Account.sign_transaction(et, self.account.key)
            raw = "0x" + bytes(signed.raw_transaction).hex()
            if self.response == "geth":
                d = kg.decode_raw(raw)
                txo = {k: (hex(v) if isinstance(v, int) else v) for k, v in d.items() if k not in ("from",)}
                txo["type"] = hex(d["type"])
                txo["input"] = txo.pop("data")
                txo["hash"] = "0x" + keccak(bytes.fromhex(raw[2:])).hex()
                res = {"raw": raw, "tx": txo}
            else:
                res = raw
        else:
            return {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no such method"}}
        return {"jsonrpc": "2.0", "id": msg["id"], "result": res}

    def close(self):
        self.server.shutdown()
