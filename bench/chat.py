#!/usr/bin/env python3
"""Messaging benchmark on loopback, all figures from one run.

- DM latency: 2 nodes; direct messages sent one after another through the HTTP API; each
  call returns when the recipient's signed receipt is back (so it covers signing, the libp2p
  round trip, verification and the recipient storing the message durably in redb).
- Sustained DMs/s: S sender nodes at once, all to the same recipient.
- A node takes 20 direct messages a second from one peer, in bursts of 200 (admission
  control); a sender past that is refused and its message waits in its outbox. So each sender
  node here sends at most BURST messages, and the latency phase is BURST messages too.
- Room fan-out: R nodes in one room; one posts, every other long-polls its room feed; latency
  from the post call to the arrival at each member.
- The floor: the machine's loopback TCP round trip (1-byte ping-pong), and libp2p's own ping
  RTT between the two nodes as the node reports it.

Usage: bench/chat.py [--bin target/release/agora] [--messages 1520] [--senders 8] [--room-nodes 20]
Starts its nodes on 127.0.0.1 in a temporary directory and stops them (by pid) at the end.
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


class Node:
    def __init__(self, binary, root, name, bootstrap=None):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        args = [binary, "up", "--data-dir", self.dir, "--listen", "/ip4/127.0.0.1/tcp/0",
                "--api", "127.0.0.1:0"]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        self.log = open(os.path.join(root, name + ".log"), "w")
        env = dict(os.environ, RUST_LOG=os.environ.get("AGORA_BENCH_LOG", "warn"))
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=env)
        api_json = os.path.join(self.dir, "api.json")
        for _ in range(2000):
            if os.path.exists(api_json):
                try:
                    info = json.load(open(api_json))
                    if info["pid"] == self.proc.pid:
                        break
                except (ValueError, KeyError):
                    pass
            if self.proc.poll() is not None:
                raise SystemExit(f"node {name} exited early; see {self.log.name}")
            time.sleep(0.01)
        else:
            raise SystemExit(f"node {name} did not start")
        self.host, self.port = info["api"].rsplit(":", 1)
        self.token = open(info["token_file"]).read().strip()
        self.peer_id = info["peer_id"]
        self.addr = [a for a in self.call("GET", "/v1/id")["addrs"] if "/tcp/" in a][0]

    def conn(self):
        return http.client.HTTPConnection(self.host, int(self.port), timeout=120)

    def call(self, method, path, body=None, conn=None):
        c = conn or self.conn()
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        out = json.loads(r.read() or b"null")
        if conn is None:
            c.close()
        if r.status >= 400:
            raise RuntimeError(f"{method} {path}: {r.status} {out}")
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def loopback_rtt(n=5000):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def echo():
        s, _ = srv.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            b = s.recv(1)
            if not b:
                return
            s.sendall(b)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    c = socket.create_connection(srv.getsockname())
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.sendall(b"x")
        c.recv(1)
        rtts.append((time.perf_counter() - t0) * 1000)
    c.close()
    srv.close()
    return rtts


def fsync_latency(root, n=2000):
    """Write 200 bytes and fdatasync, as a durable store does per commit."""
    path = os.path.join(root, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        os.pwrite(fd, b"x" * 200, (i % 64) * 4096)
        os.fdatasync(fd)
        out.append((time.perf_counter() - t0) * 1000)
    os.close(fd)
    os.unlink(path)
    return out


# Direct messages one peer may send another at once: the recipient's budget is 20 a second in
# bursts of 200 (agora-chat's budget::DIRECT_MESSAGES); a few are left for the protocol's own.
BURST = 190


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/agora")
    ap.add_argument("--messages", type=int, default=BURST * 8,
                    help="messages of the sustained phase, split among the senders (at most "
                         f"{BURST} each)")
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--room-nodes", type=int, default=20)
    ap.add_argument("--posts", type=int, default=30)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="agora-chat-bench-")
    nodes = []
    try:
        result = {}
        floor = loopback_rtt()
        result["loopback_rtt_ms"] = {"p50": pct(floor, 50), "p99": pct(floor, 99)}
        print(f"loopback TCP round trip (1 byte):   p50 {pct(floor, 50):.3f} ms   p99 {pct(floor, 99):.3f} ms")
        sync = fsync_latency(root)
        result["fdatasync_ms"] = {"p50": pct(sync, 50), "p99": pct(sync, 99)}
        print(f"write+fdatasync (200 B, same disk):  p50 {pct(sync, 50):.3f} ms   p99 {pct(sync, 99):.3f} ms")

        a = Node(args.bin, root, "a")
        nodes.append(a)
        b = Node(args.bin, root, "b", bootstrap=a.addr)
        nodes.append(b)
        a.call("POST", "/v1/connect", {"target": b.addr})
        time.sleep(2)
        ping = [p.get("latency_ms") for p in a.call("GET", "/v1/peers") if p["peer_id"] == b.peer_id]
        print(f"libp2p ping RTT a->b (node report):  {ping[0] if ping else 'n/a'} ms")

        # DM latency, one at a time.
        conn = a.conn()
        lat = []
        count = BURST
        t_start = time.perf_counter()
        for i in range(count):
            t0 = time.perf_counter()
            out = a.call("POST", "/v1/chat/send", {"to": b.peer_id, "text": f"m{i}"}, conn=conn)
            lat.append((time.perf_counter() - t0) * 1000)
            if out["state"] != "delivered":
                raise SystemExit(f"message {i} not delivered: {out}")
        elapsed = time.perf_counter() - t_start
        print(f"DM latency ({count} msgs, send->receipt): p50 {pct(lat, 50):.2f} ms   "
              f"p99 {pct(lat, 99):.2f} ms   mean {statistics.mean(lat):.2f} ms   "
              f"({count / elapsed:.0f} msgs/s one at a time)")
        durable = pct(floor, 50) + 2 * pct(sync, 50)
        result["dm_latency_ms"] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "messages": count,
                                   "vs_durable_floor": pct(lat, 50) / durable,
                                   "vs_rtt": pct(lat, 50) / pct(floor, 50)}
        print(f"  ratio p50 / loopback TCP RTT p50: {pct(lat, 50) / pct(floor, 50):.0f}x; "
              f"p50 / (RTT + 2 fdatasync, the floor for a message durable at both ends): "
              f"{pct(lat, 50) / durable:.1f}x")

        # Sustained: several sender nodes at once, each within its burst, to one recipient.
        per = max(1, min(BURST, args.messages // args.senders))
        senders = []
        for k in range(args.senders):
            s = Node(args.bin, root, f"s{k}", bootstrap=b.addr)
            nodes.append(s)
            s.call("POST", "/v1/connect", {"target": b.addr})
            senders.append(s)
        time.sleep(2)
        errors = []

        def sender(k):
            node = senders[k]
            c = node.conn()
            for i in range(per):
                out = node.call("POST", "/v1/chat/send", {"to": b.peer_id, "text": f"s{k}-{i}"},
                                conn=c)
                if out["state"] != "delivered":
                    errors.append(out)

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(args.senders)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        total = per * args.senders
        print(f"sustained DMs ({args.senders} sender nodes, {total} msgs): {total / took:.0f} "
              f"msgs/s delivered" + (f"  ({len(errors)} not delivered)" if errors else ""))
        if errors:
            raise SystemExit(f"{len(errors)} messages not delivered, e.g. {errors[0]}")
        result["dm_sustained_per_s"] = total / took
        got = b.call("GET", "/v1/chat/messages?direction=in&limit=1")["cursor"]
        print(f"  recipient stored {got} messages (expected {count + total})")
        for n in nodes:
            n.stop()
        nodes.clear()

        # Room fan-out.
        hub = Node(args.bin, root, "r0")
        nodes.append(hub)
        for i in range(1, args.room_nodes):
            nodes.append(Node(args.bin, root, f"r{i}", bootstrap=hub.addr))
        for n in nodes:
            n.call("POST", "/v1/chat/rooms/join", {"room": "bench"})
        deadline = time.time() + 30
        while time.time() < deadline:
            counts = [n.call("GET", "/v1/chat/rooms")[0]["members"] for n in nodes]
            if min(counts) >= 1:
                break
            time.sleep(0.5)
        time.sleep(3)  # let the gossip mesh settle
        arrivals = {}
        posted = {}
        stop = threading.Event()

        def watch(n):
            c = n.conn()
            cursor = n.call("GET", "/v1/chat/rooms/bench/messages?limit=1", conn=c)["cursor"]
            while not stop.is_set():
                page = n.call("GET", f"/v1/chat/rooms/bench/messages?after={cursor}&wait=2", conn=c)
                now = time.perf_counter()
                cursor = page["cursor"]
                for m in page["messages"]:
                    arrivals[(n.peer_id, m["text"])] = now

        watchers = [threading.Thread(target=watch, args=(n,), daemon=True) for n in nodes[1:]]
        for w in watchers:
            w.start()
        time.sleep(1)
        poster = nodes[0]
        c = poster.conn()
        for i in range(args.posts):
            text = f"fanout-{i}"
            posted[text] = time.perf_counter()
            poster.call("POST", "/v1/chat/rooms/post", {"room": "bench", "text": text}, conn=c)
            time.sleep(0.1)
        time.sleep(5)
        stop.set()
        fan = []
        missing = 0
        for n in nodes[1:]:
            for text, t0 in posted.items():
                t1 = arrivals.get((n.peer_id, text))
                if t1 is None:
                    missing += 1
                else:
                    fan.append((t1 - t0) * 1000)
        expected = len(posted) * (len(nodes) - 1)
        print(f"room fan-out ({len(nodes)} nodes, {len(posted)} posts): p50 {pct(fan, 50):.1f} ms   "
              f"p99 {pct(fan, 99):.1f} ms   max {max(fan) if fan else float('nan'):.1f} ms   "
              f"delivered {len(fan)}/{expected}")
        result["room_fanout_ms"] = {"nodes": len(nodes), "p50": pct(fan, 50), "p99": pct(fan, 99),
                                    "delivered": len(fan), "expected": expected}
        print(json.dumps(result))
    finally:
        for n in nodes:
            n.stop()
        if os.environ.get("AGORA_BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
