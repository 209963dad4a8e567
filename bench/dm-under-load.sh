#!/usr/bin/env bash
# Direct-message round trips (`agora send`, including the CLI's start) from b to a, idle and
# while b downloads 64 MiB from a, over a 100 Mbit/s link: two network namespaces made here,
# joined by a veth pair shaped with tbf (nothing is routed out of the machine). Shows what a
# bulk transfer on the same connection costs small messages (yamux frame size, link queue).
# Needs root. Usage: bench/dm-under-load.sh [path/to/agora] [ENV=VALUE...]
set -uo pipefail
BIN=$(readlink -f "${1:-target/release/agora}"); shift || true
D=$(mktemp -d /var/tmp/agora-dmload.XXXXXX)
NA=agsh-a-$$; NB=agsh-b-$$
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.5; ip netns del $NA 2>/dev/null; ip netns del $NB 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
ip netns add $NA; ip netns add $NB
ip -n $NA link add va type veth peer name vb netns $NB
ip -n $NA addr add 10.77.0.1/24 dev va; ip -n $NB addr add 10.77.0.2/24 dev vb
for n in $NA $NB; do ip -n $n link set lo up; done
ip -n $NA link set va up; ip -n $NB link set vb up
ip netns exec $NA tc qdisc add dev va root tbf rate 100mbit burst 64kb latency 100ms
ip netns exec $NB tc qdisc add dev vb root tbf rate 100mbit burst 64kb latency 100ms
head -c $((64*1048576)) /dev/urandom > $D/src.bin
start() { local ns=$1 n=$2 ip=$3; shift 3; env "$@" ip netns exec $ns "$BIN" up --data-dir $D/$n --listen /ip4/$ip/tcp/4001 --api 127.0.0.1:0 --storage-quota 0 > $D/$n.log 2>&1 & PIDS+=($!)
  for _ in $(seq 200); do [ -f $D/$n/api.json ] && return; sleep 0.05; done; echo "no start $n"; exit 1; }
start $NA a 10.77.0.1 "$@"
A_ID=$(ip netns exec $NA "$BIN" id --data-dir $D/a --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])')
start $NB b 10.77.0.2 "$@"
ip netns exec $NB "$BIN" connect /ip4/10.77.0.1/tcp/4001/p2p/$A_ID --data-dir $D/b > /dev/null
HASH=$(ip netns exec $NA "$BIN" share $D/src.bin --data-dir $D/a --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
lat() { local t0 t1; t0=$(date +%s%N); ip netns exec $NB "$BIN" send "$A_ID" "ping $1" --data-dir $D/b > /dev/null; t1=$(date +%s%N); echo $(( (t1-t0)/1000000 )); }
IDLE=(); for i in 1 2 3 4 5; do IDLE+=($(lat i$i)); done
ip netns exec $NB "$BIN" get "$HASH" -o $D/copy.bin --data-dir $D/b > /dev/null & G=$!
sleep 1.5
BUSY=(); for i in $(seq 8); do kill -0 $G 2>/dev/null || break; BUSY+=($(lat b$i)); sleep 0.2; done
wait $G
cmp -s $D/src.bin $D/copy.bin && echo "copy ok"
echo "DM latency ms (incl. CLI start) idle: ${IDLE[*]}; during the transfer: ${BUSY[*]}"
