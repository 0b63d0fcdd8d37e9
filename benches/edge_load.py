#!/usr/bin/env python3
"""Driver of benches/edge_load.sh: HOSTILE clients send the most expensive typed data inside
keyguard's caps as fast as they can while one client signs ordinary transactions; prints the
normal client's latency percentiles, the hostile request rate and the daemon's peak RSS."""
import http.client, json, sys, threading, time

addr, pid, seconds, hostile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
FROM = sys.argv[5]


def typed(types, primary, message):
    return {"types": types, "primaryType": primary, "domain": {"name": "bench", "chainId": 31337}, "message": message}


def chain_types(n, suffix=""):
    t = {f"T{i}": [{"name": "f0", "type": f"T{i+1}{suffix}"}] for i in range(n - 1)}
    t[f"T{n-1}"] = [{"name": "amount", "type": "uint256"}, {"name": "note", "type": "string"}]
    return t


# 1. 15,000 uint256 values as JSON numbers (value cap 16,384, 1,024 per array).
wide = typed({"M": [{"name": "xs", "type": "uint256[][]"}]}, "M", {"xs": [[10**15 + i for i in range(1000)]] * 15})
# 2. A diamond at the expansion cap (11 levels, fanout 2: 2,047 nodes), filled.
diamond_types = {f"T{i}": [{"name": "f0", "type": f"T{i+1}"}, {"name": "f1", "type": f"T{i+1}"}] for i in range(10)}
diamond_types["T10"] = [{"name": "amount", "type": "uint256"}]
leaf = {"amount": "7"}
for _ in range(10):
    leaf = {"f0": leaf, "f1": leaf}
diamond = typed(diamond_types, "T0", leaf)
# 3. 900 structs of a 15-deep chain (16 struct types; 17 values each, cap 16,384).
inner = {"amount": "1", "note": "x" * 100}
for _ in range(14):
    inner = {"f0": inner}
deep_types = chain_types(16)
deep_types["T0"] = [{"name": "f0", "type": "T1[]"}]
deep = typed(deep_types, "T0", {"f0": [inner] * 900})
BODIES = [json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_signTypedData_v4", "params": [FROM, t]}) for t in (wide, diamond, deep)]

stop = threading.Event()
hostile_done = [0]
lock = threading.Lock()


def hostile_client(i):
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    n = 0
    while not stop.is_set():
        body = BODIES[(i + n) % len(BODIES)]
        try:
            c.request("POST", "/", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
        except Exception:
            c.close()
            c = http.client.HTTPConnection(host, int(port), timeout=120)
            continue
        n += 1
    with lock:
        hostile_done[0] += n


def tx(nonce):
    return {"from": FROM, "to": "0x000000000000000000000000000000000000dEaD", "value": "0x1", "gas": "0x5208",
            "maxFeePerGas": "0x3b9aca00", "maxPriorityFeePerGas": "0x1", "nonce": hex(nonce), "chainId": "0x7a69"}


def normal(latencies, duration, start_nonce):
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    end = time.monotonic() + duration
    nonce = start_nonce
    while time.monotonic() < end:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_signTransaction", "params": [tx(nonce)]})
        t0 = time.perf_counter()
        c.request("POST", "/", body, {"Content-Type": "application/json"})
        out = json.loads(c.getresponse().read())
        latencies.append((time.perf_counter() - t0) * 1000)
        assert "result" in out, out
        nonce += 1
        time.sleep(0.01)
    return nonce


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def hwm():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024


for name, body in zip(("wide", "diamond", "deep"), BODIES):
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    t0 = time.perf_counter()
    c.request("POST", "/", body, {"Content-Type": "application/json"})
    out = json.loads(c.getresponse().read())
    print(f"hostile shape {name}: {len(body)} bytes, one request {1000 * (time.perf_counter() - t0):.1f} ms, answer {out.get('error', {}).get('code')}")

base = []
nonce = normal(base, min(5.0, seconds), 0)
print(f"baseline (no hostile load): {len(base)} calls, p50 {pct(base, 50):.2f} ms, p99 {pct(base, 99):.2f} ms, peak RSS {hwm()} MiB")
threads = [threading.Thread(target=hostile_client, args=(i,)) for i in range(hostile)]
for t in threads:
    t.start()
time.sleep(1)
lat = []
normal(lat, seconds, nonce)
stop.set()
for t in threads:
    t.join()
print(f"under {hostile} hostile typed-data clients: {len(lat)} calls, p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms")
print(f"hostile requests answered: {hostile_done[0]} ({hostile_done[0] / (seconds + 1):.1f}/s); daemon peak RSS {hwm()} MiB")
