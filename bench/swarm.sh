#!/usr/bin/env bash
# One seeder, N downloaders (default 8) starting together: total time until all have the file,
# each downloader's own completion time, and the seeder's upload as a multiple of the file size
# (downloaders serve each other the pieces they have verified, so it should stay well under N).
#
# The same task is run with BitTorrent too (aria2c peers, an opentracker tracker, a private
# torrent made by mktorrent), interleaved with agora round by round (ROUNDS, default 3; the
# order alternates: odd rounds agora first, even rounds aria2c first), so both see the same
# machine load. Every round uses fresh data dirs and the same random source file.
#
# Fairness: agora's downloaders keep serving after their get completes (the daemons stay up), so
# the aria2c downloaders keep seeding too (--seed-ratio=0.0) until the last one is done; each
# one's completion is noted by its --on-bt-download-complete hook. The aria2c processes are
# started paused and unpaused together through their JSON-RPC, as agora's daemons are up before
# the gets start. The seeder's upload is agora's bytes_out (wire bytes) and aria2c's
# uploadLength (piece payload) — so agora's figure includes its protocol overhead.
#
# Usage: bench/swarm.sh [path/to/agora]   (default target/release/agora)
# Environment: SIZE_MIB=256 N=8 ROUNDS=3 TIMEOUT=300 (seconds per client per round)
#   PIECE_KIB=256 (torrent piece size; mktorrent's default is 2^18 = 256 KiB)
#   ARIA2=0 (agora only), KEEP=1 (keep the temp dir)
#   SEEDER_LEAVES=1.5: stop each seeder once it has uploaded 1.5 x the file (polled every
#     20 ms) and check that every downloader still completes from the others; a round that does
#     not complete within TIMEOUT is then reported (all_completed=false), not fatal.
# The last line is JSON: size_mib, downloaders, seconds, seeder_upload_x, median_downloader_s
# (agora's medians over the rounds), rounds, agora_samples, aria2 {...}, vs_aria2 (aria2c's
# seconds / agora's: > 1 means agora is faster), vs_aria2_downloader, seeder_leaves.
#
# Everything listens on and talks to 127.0.0.1 only: no DHT, LPD or PEX, the tracker is bound to
# 127.0.0.1, aria2c is bound to 127.0.0.1 (--interface) and announces it (--bt-external-ip).
# Every process is stopped by pid at the end of its round (and at exit); no loop is unbounded.
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/agora}")
SIZE_MIB=${SIZE_MIB:-256}
N=${N:-8}
ROUNDS=${ROUNDS:-3}
TIMEOUT=${TIMEOUT:-300}
PIECE_KIB=${PIECE_KIB:-256}
ARIA2=${ARIA2:-1}
SEEDER_LEAVES=${SEEDER_LEAVES:-}
SIZE=$((SIZE_MIB * 1048576))
# No proxy may carry a request to 127.0.0.1 elsewhere (aria2c and urllib both honour these).
unset http_proxy https_proxy all_proxy ftp_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY FTP_PROXY

# aria2c, opentracker and mktorrent: installed if missing and we are root, else a clear error.
if [ "$ARIA2" = 1 ]; then
  missing=()
  for tool in aria2c:aria2 opentracker:opentracker mktorrent:mktorrent; do
    command -v "${tool%%:*}" > /dev/null || missing+=("${tool#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
      apt-get install -y "${missing[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; }
    else
      echo "bench/swarm.sh needs ${missing[*]} for the BitTorrent comparison:" \
        "apt-get install ${missing[*]} (as root), or run with ARIA2=0 for agora only" >&2
      exit 1
    fi
  fi
  # mktorrent takes the piece size as a power of two.
  PIECE_LOG=0
  while [ $((1 << PIECE_LOG)) -lt $((PIECE_KIB * 1024)) ]; do PIECE_LOG=$((PIECE_LOG + 1)); done
  [ $((1 << PIECE_LOG)) -eq $((PIECE_KIB * 1024)) ] && [ "$PIECE_LOG" -ge 15 ] ||
    { echo "PIECE_KIB=$PIECE_KIB is not a power of two >= 32" >&2; exit 1; }
fi

D=$(mktemp -d /var/tmp/agora-swarm.XXXXXX)
H=$D/helper.py
PIDS=()  # every process started (stopped again at exit)
RPIDS=() # the processes of the current round
# TERM the given pids, then KILL whatever is still alive after 5 s.
stop() {
  [ $# -gt 0 ] || return 0
  kill "$@" 2> /dev/null || true
  for _ in $(seq 50); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2> /dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  kill -9 "$@" 2> /dev/null || true
}
cleanup() { stop "${PIDS[@]}"; [ -n "${KEEP:-}" ] && echo "kept $D" || rm -rf "$D"; }
trap cleanup EXIT
track() { PIDS+=("$1"); RPIDS+=("$1"); }

# The Python side: JSON-RPC to aria2c, agora's status API, the wait loop, the summaries.
# Every request goes to 127.0.0.1 (aria2c's RPC, agora's API in api.json, the tracker).
cat > "$H" <<'PY'
import json, os, re, signal, socket, statistics, sys, time, urllib.parse, urllib.request

HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy

def get(url, data=None, headers={}):
    with HTTP.open(urllib.request.Request(url, data, headers), timeout=5) as r:
        return r.read()

def rpc(port, method, *params):
    body = json.dumps({"jsonrpc": "2.0", "id": "b", "method": method, "params": list(params)})
    reply = get(f"http://127.0.0.1:{port}/jsonrpc", body.encode(), {"Content-Type": "application/json"})
    return json.loads(reply)["result"]

def uploaded(spec):
    """Bytes uploaded so far by a peer: "aria2:<rpc port>" or "agora:<data dir>"."""
    kind, where = spec.split(":", 1)
    if kind == "aria2":
        keys = ["uploadLength"]
        ds = rpc(where, "aria2.tellActive", keys) + rpc(where, "aria2.tellWaiting", 0, 9, keys) \
            + rpc(where, "aria2.tellStopped", 0, 9, keys)
        return sum(int(d["uploadLength"]) for d in ds)
    info = json.load(open(os.path.join(where, "api.json")))
    token = open(info["token_file"]).read().strip()
    assert info["api"].startswith("127.0.0.1:"), info["api"]
    status = get(f"http://{info['api']}/v1/status", headers={"Authorization": f"Bearer {token}"})
    return json.loads(status)["bytes_out"]

def bounded(what, check, secs=20):
    end = time.time() + secs
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.time() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)

def ports(k):
    """k free ports on 127.0.0.1, free for both TCP and UDP (the tracker uses both)."""
    held, out = [], []
    while len(out) < int(k):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        p = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held += [t, u]
        try:
            u.bind(("127.0.0.1", p))
            out.append(p)
        except OSError:
            pass
    print(*out)

def scrape_wait(port, infohash):
    """Waits until the tracker counts a seeder (complete >= 1) for the torrent."""
    url = f"http://127.0.0.1:{port}/scrape?info_hash=" + urllib.parse.quote(bytes.fromhex(infohash))
    bounded("the tracker to list the seeder",
            lambda: int(re.search(rb"8:completei(\d+)e", get(url)).group(1)) >= 1)

def watch(client, rnd, rdir, n, t0, timeout, size, leave, seed_pid, before, seeder, *peers):
    """Waits (at most `timeout` s after t0) for the markers <rdir>/d<i>.done ("<rc> <time>"),
    stops the seeder once it has uploaded `leave` x the file (if leave > 0), then writes the
    round's result to <rdir>/result.json. Exit status 2 if not every downloader completed."""
    n, t0, timeout, size, leave, seed_pid, before = \
        int(n), float(t0), float(timeout), int(size), float(leave), int(seed_pid), int(before)
    marks = [os.path.join(rdir, f"d{i}.done") for i in range(1, n + 1)]
    left_s = up = None
    timed_out = False
    while not all(os.path.exists(m) for m in marks):
        if time.time() > t0 + timeout:
            timed_out = True
            break
        if leave > 0 and left_s is None:
            try:
                u = uploaded(seeder) - before
            except Exception:
                u = 0
            if u >= leave * size:
                os.kill(seed_pid, signal.SIGTERM)
                left_s, up = time.time() - t0, u
        time.sleep(0.02 if leave > 0 else 0.1)
    if up is None:
        up = uploaded(seeder) - before
    peer_up = 0
    for p in peers:
        try:
            peer_up += uploaded(p)
        except Exception:
            pass
    times, failed = [], []  # completion times (s after t0); downloaders whose get failed
    for i, m in enumerate(marks, 1):
        if os.path.exists(m):
            rc, t = open(m).read().split()
            if rc == "0":
                times.append(float(t) - t0)
            else:
                failed.append(i)
    r = dict(round=int(rnd), seconds=round(max(times), 2) if times else None,
             median_downloader_s=round(statistics.median(times), 2) if times else None,
             downloader_s=[round(t, 2) for t in sorted(times)],
             seeder_upload_x=round(up / size, 2), downloaders_upload_x=round(peer_up / size, 2),
             completed=len(times), all_completed=len(times) == n)
    if leave > 0:
        r["seeder_left_s"] = round(left_s, 2) if left_s is not None else None
    if timed_out:
        r["timed_out"] = True
    if failed:
        r["failed"] = failed
    json.dump(r, open(os.path.join(rdir, "result.json"), "w"))
    sys.exit(0 if r["all_completed"] else 2)

def line(client, path):
    r = json.load(open(path))
    left = ""
    if "seeder_left_s" in r:
        left = (f", seeder left at {r['seeder_left_s']} s" if r["seeder_left_s"] is not None
                else ", seeder never reached the leave threshold")
    print(f"  round {r['round']} {client:6}: {r['completed']} done, last at {r['seconds']} s, "
          f"median downloader {r['median_downloader_s']} s, seeder uploaded "
          f"{r['seeder_upload_x']} x, downloaders {r['downloaders_upload_x']} x{left}"
          + ("" if r["all_completed"] else "  -- NOT ALL COMPLETED"))

def report(resdir, size_mib, n, rounds, piece_kib, leave):
    """Medians over the rounds per client, a human summary, and the JSON line (last)."""
    size_mib, n, rounds = int(size_mib), int(n), int(rounds)
    def load(client):
        paths = [os.path.join(resdir, f"{client}-{k}.json") for k in range(1, rounds + 1)]
        return [json.load(open(p)) for p in paths if os.path.exists(p)]
    def med(samples, key):
        xs = [s[key] for s in samples if s[key] is not None]
        return round(statistics.median(xs), 2) if xs else None
    def summary(samples):
        return dict(seconds=med(samples, "seconds"),
                    median_downloader_s=med(samples, "median_downloader_s"),
                    seeder_upload_x=med(samples, "seeder_upload_x"))
    def say(name, s, extra=""):
        rate = f" ({n * size_mib / s['seconds']:.0f} MiB/s delivered in total)" if s["seconds"] else ""
        print(f"  {name}: all done in {s['seconds']} s{rate}, median downloader "
              f"{s['median_downloader_s']} s, seeder uploaded {s['seeder_upload_x']} x the file{extra}")
    ag, a2 = load("agora"), load("aria2")
    out = dict(size_mib=size_mib, downloaders=n, **summary(ag), rounds=rounds,
               agora_samples=ag, aria2=None, vs_aria2=None, vs_aria2_downloader=None,
               seeder_leaves=float(leave) if leave else None)
    if leave:
        out["all_completed"] = all(s["all_completed"] for s in ag)
    print(f"1 seeder -> {n} downloaders, {size_mib} MiB each, medians of {rounds} round(s):")
    say("agora ", out)
    if a2:
        a = dict(summary(a2), piece_kib=int(piece_kib), samples=a2)
        if leave:
            a["all_completed"] = all(s["all_completed"] for s in a2)
        out["aria2"] = a
        say("aria2c", a, f" ({piece_kib} KiB pieces)")
        if a["seconds"] and out["seconds"]:
            out["vs_aria2"] = round(a["seconds"] / out["seconds"], 2)
        if a["median_downloader_s"] and out["median_downloader_s"]:
            out["vs_aria2_downloader"] = round(a["median_downloader_s"] / out["median_downloader_s"], 2)
        print(f"  aria2c's time / agora's: {out['vs_aria2']} for the last downloader, "
              f"{out['vs_aria2_downloader']} for the median one (> 1: agora is faster)")
    if leave:
        print(f"  every downloader completed after the seeder left: agora {out['all_completed']}"
              + (f", aria2c {out['aria2']['all_completed']}" if a2 else ""))
    print(f"seeder upload: target <= 3 for agora; without swarming it would be {n}")
    print(json.dumps(out))

# Small command-line wrappers for the script.
def listening(port):
    """Waits until something accepts TCP connections on 127.0.0.1:port."""
    bounded(f"a listener on port {port}", lambda: socket.create_connection(("127.0.0.1", int(port)), 1).close() or True)

def seeding(rpc_port):
    """Waits until the aria2c behind rpc_port is seeding (has the whole file)."""
    bounded("the aria2c seeder", lambda: rpc(rpc_port, "aria2.tellActive", ["seeder"])[0]["seeder"] == "true")

def uploaded_cli(spec):
    print(uploaded(spec))

def unpause_cli(*rpc_ports):
    """Unpauses every aria2c at once; prints the start time, taken just before the first one."""
    for p in rpc_ports:
        bounded(f"aria2c RPC on port {p}", lambda: rpc(p, "aria2.getVersion"))
    t0 = time.time()
    for p in rpc_ports:
        rpc(p, "aria2.unpauseAll")
    print(f"{t0:.6f}")

if __name__ == "__main__":
    name = sys.argv[1].replace("-", "_")
    (globals().get(name + "_cli") or globals()[name])(*sys.argv[2:])
PY
# aria2c runs this when a download completes (args: gid, number of files, first file's path):
# it writes the marker <downloader dir>.done as "<rc> <time>", atomically.
cat > "$D/aria2-done.sh" <<'SH'
#!/bin/sh
d=$(dirname "$3"); echo "0 $(date +%s.%N)" > "$d.done.tmp" && mv "$d.done.tmp" "$d.done"
SH
chmod +x "$D/aria2-done.sh"
mkdir "$D/results"
head -c "$SIZE" /dev/urandom > "$D/src.bin"

# Checks the copies of the downloaders that completed, then stops this round's processes.
verify_and_stop() { # $1 = client, $2.. = the copies
  local client=$1 i=0
  stop "${RPIDS[@]}"
  shift
  for f in "$@"; do
    i=$((i + 1))
    [ -f "$R/d$i.done" ] && [ "$(cut -d' ' -f1 < "$R/d$i.done")" = 0 ] || continue
    cmp -s "$D/src.bin" "$f" || { echo "$client: copy $i differs from the source" >&2; exit 1; }
  done
}
# Prints the round's line; fails the run if a downloader did not complete (unless SEEDER_LEAVES).
finish_round() { # $1 = client, $2 = round, $3 = the watcher's exit status
  cp "$R/result.json" "$D/results/$1-$2.json"
  python3 "$H" line "$1" "$R/result.json"
  if [ "$3" != 0 ] && [ -z "$SEEDER_LEAVES" ]; then
    echo "$1: not every downloader completed within ${TIMEOUT} s (logs in $R; KEEP=1 keeps them)" >&2
    exit 1
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$R"
}

# ---- agora: daemons on 127.0.0.1, the downloaders bootstrap from the seeder; one `agora get`
# per downloader, started together; each get's end is its completion time.
start() {
  "$BIN" up --data-dir "$R/$1" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 \
    --storage-quota 0 "${@:2}" > "$R/$1.log" 2>&1 &
  track $!
  for _ in $(seq 400); do [ -f "$R/$1/api.json" ] && return; sleep 0.05; done
  echo "node $1 did not start" >&2; exit 1
}
status() { "$BIN" status --data-dir "$R/$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }

agora_round() { # $1 = round
  R=$D/r$1-agora; RPIDS=(); mkdir -p "$R"
  start seed
  local seed_pid=$! seed hash before t0 rc=0 i
  seed=$("$BIN" id --data-dir "$R/seed" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["addrs"][0])')
  for i in $(seq "$N"); do start "d$i" --bootstrap "$seed"; done
  hash=$("$BIN" share "$D/src.bin" --data-dir "$R/seed" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
  before=$(status seed bytes_out)

  t0=$(date +%s.%N)
  for i in $(seq "$N"); do
    (
      rc=0
      "$BIN" get "$hash" -o "$R/out$i.bin" --data-dir "$R/d$i" > "$R/get$i.log" 2>&1 &
      echo $! > "$R/get$i.pid"
      wait $! || rc=$?
      echo "$rc $(date +%s.%N)" > "$R/d$i.done.tmp" && mv "$R/d$i.done.tmp" "$R/d$i.done"
    ) &
    track $!
  done
  python3 "$H" watch agora "$1" "$R" "$N" "$t0" "$TIMEOUT" "$SIZE" "${SEEDER_LEAVES:-0}" \
    "$seed_pid" "$before" "agora:$R/seed" $(for i in $(seq "$N"); do echo "agora:$R/d$i"; done) || rc=$?
  # A get still running (timeout) is stopped by pid before its daemon.
  for i in $(seq "$N"); do
    [ -f "$R/d$i.done" ] || { p=$(cat "$R/get$i.pid" 2> /dev/null) && kill "$p" 2> /dev/null || true; }
  done
  verify_and_stop agora $(for i in $(seq "$N"); do echo "$R/out$i.bin"; done)
  finish_round agora "$1" "$rc"
}

# ---- aria2c: opentracker on 127.0.0.1 (whitelisting the torrent: Debian builds it with a
# whitelist), one seeder with the file (seeds at once, unverified, forever), N downloaders in
# their own dirs, started paused and unpaused together; everybody seeds until the last is done.
aria2_round() { # $1 = round
  R=$D/r$1-aria2; RPIDS=(); mkdir -p "$R/tracker" "$R/seed"
  local p tp hash t0 before seed_pid rc=0 i
  p=$(python3 "$H" ports $((2 * N + 3)))
  read -r -a p <<< "$p"
  tp=${p[0]} # the tracker; the seeder listens on p[1] (RPC p[2]), downloader i on p[2i+1] (RPC p[2i+2])
  cp "$D/src.bin" "$R/seed/src.bin"
  mktorrent -p -l "$PIECE_LOG" -a "http://127.0.0.1:$tp/announce" -o "$R/src.torrent" "$D/src.bin" > "$R/mktorrent.log"
  hash=$(aria2c -S "$R/src.torrent" | sed -n 's/^Info Hash: //p')
  echo "$hash" > "$R/tracker/whitelist.txt"
  echo "access.whitelist whitelist.txt" > "$R/tracker/opentracker.conf"
  chmod 755 "$R/tracker" && chmod 644 "$R/tracker/"*
  # opentracker chroots into -d (its cwd here) and drops to user nobody; the paths are relative.
  (cd "$R/tracker" && exec opentracker -f opentracker.conf -i 127.0.0.1 -p "$tp" -P "$tp" -d .) > "$R/tracker.log" 2>&1 &
  track $!
  python3 "$H" listening "$tp"

  local a2=(aria2c --no-conf --enable-rpc --rpc-listen-all=false
    --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false
    --bt-external-ip=127.0.0.1 --interface=127.0.0.1 --disable-ipv6=true
    --seed-ratio=0.0 --summary-interval=0 --console-log-level=warn --log-level="${ARIA2_LOG_LEVEL:-notice}"
    --auto-file-renaming=false --stop-with-process=$$)
  "${a2[@]}" --dir="$R/seed" --listen-port="${p[1]}" --rpc-listen-port="${p[2]}" \
    --bt-seed-unverified=true --log="$R/seed.log" "$R/src.torrent" > "$R/seed.out" 2>&1 &
  seed_pid=$!
  track $!
  python3 "$H" seeding "${p[2]}"
  python3 "$H" scrape-wait "$tp" "$hash"
  for i in $(seq "$N"); do
    mkdir "$R/d$i"
    "${a2[@]}" --dir="$R/d$i" --listen-port="${p[$((2 * i + 1))]}" --rpc-listen-port="${p[$((2 * i + 2))]}" \
      --pause=true --on-bt-download-complete="$D/aria2-done.sh" --log="$R/d$i.log" \
      "$R/src.torrent" > "$R/d$i.out" 2>&1 &
    track $!
  done
  before=$(python3 "$H" uploaded "aria2:${p[2]}")
  t0=$(python3 "$H" unpause $(for i in $(seq "$N"); do echo "${p[$((2 * i + 2))]}"; done))
  python3 "$H" watch aria2 "$1" "$R" "$N" "$t0" "$TIMEOUT" "$SIZE" "${SEEDER_LEAVES:-0}" \
    "$seed_pid" "$before" "aria2:${p[2]}" $(for i in $(seq "$N"); do echo "aria2:${p[$((2 * i + 2))]}"; done) || rc=$?
  verify_and_stop aria2 $(for i in $(seq "$N"); do echo "$R/d$i/src.bin"; done)
  finish_round aria2 "$1" "$rc"
}

echo "1 seeder -> $N downloaders of $SIZE_MIB MiB on 127.0.0.1, $ROUNDS round(s)${SEEDER_LEAVES:+, seeder leaves after uploading $SEEDER_LEAVES x}"
[ "$ARIA2" = 1 ] && echo "aria2c: private torrent with $PIECE_KIB KiB pieces (mktorrent's default is 256 KiB), opentracker, no DHT/LPD/PEX"
for k in $(seq "$ROUNDS"); do
  if [ "$ARIA2" != 1 ]; then agora_round "$k"
  elif [ $((k % 2)) = 1 ]; then agora_round "$k"; aria2_round "$k"
  else aria2_round "$k"; agora_round "$k"; fi
done
python3 "$H" report "$D/results" "$SIZE_MIB" "$N" "$ROUNDS" "${PIECE_KIB}" "$SEEDER_LEAVES"
