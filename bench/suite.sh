#!/usr/bin/env bash
# suite.sh: the benchmark suite of BENCHMARKS.md. It builds amqphub, starts
# `amqphub serve` as its own process (loopback only, data in a temporary
# directory, profiles on a loopback pprof port; a fresh one per scenario),
# runs every `amqphub bench` scenario against it with the hub's process id (so reports show the hub's
# CPU and memory apart from the load generator's), prints each command
# before its report, and stops the hub. Not part of `make test`.
#
# Usage: bench/suite.sh [SCENARIO...]   (default: all of d2c e2e read c2d connections)
#   env ROUNDS=n repeats every run n times (default 1)
#   env CONNECTIONS=n for the connections scenario (default 19000: the
#   hub and the generator each need one file descriptor per connection,
#   and both must stay under `ulimit -n`)
#   env HUB_BIN=path serves with another amqphub binary (an older build,
#   for before/after comparisons); the load generator is always this tree's
#   env HUB_GOGC=n runs the hub with GOGC=n (the Go collector's heap growth
#   target; the default 100 lets the heap reach twice the live data)
set -euo pipefail

ROUNDS=${ROUNDS:-1}
CONNECTIONS=${CONNECTIONS:-19000}
SCENARIOS=${*:-d2c e2e read c2d connections}
AMQP=127.0.0.1:45672 AMQPS=127.0.0.1:45671 HTTPS=127.0.0.1:45443 PPROF=127.0.0.1:45060

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/amqphub-suite.XXXXXX)
HUB_PID="" HUB_CS=""
cleanup() {
	set +e
	if [ -n "$HUB_PID" ]; then
		kill "$HUB_PID" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$HUB_PID" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$HUB_PID" 2>/dev/null
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$REPO" && go build -o "$WORK/amqphub" ./cmd/amqphub)

stop_hub() {
	[ -n "$HUB_PID" ] || return 0
	kill "$HUB_PID" 2>/dev/null || true
	for _ in $(seq 150); do kill -0 "$HUB_PID" 2>/dev/null || break; sleep 0.2; done
	HUB_PID=""
}
start_hub() { # a fresh hub: new data directory, nothing in its heap from earlier runs
	stop_hub
	rm -rf "$WORK/hub"
	env ${HUB_GOGC:+GOGC=$HUB_GOGC} AMQPHUB_PPROF_ADDR=$PPROF "${HUB_BIN:-$WORK/amqphub}" serve --data-dir "$WORK/hub" --amqp-addr $AMQP \
		--amqps-addr $AMQPS --https-addr $HTTPS --log-level warn >"$WORK/hub.log" 2>&1 &
	HUB_PID=$!
	for _ in $(seq 100); do grep -q "is ready" "$WORK/hub.log" && break; sleep 0.2; done
	grep -q "is ready" "$WORK/hub.log" || { cat "$WORK/hub.log" >&2; exit 1; }
	HUB_CS=$(grep -m1 'SharedAccessKeyName=iothubowner' "$WORK/hub.log" | tr -d ' ')
	echo
	echo "# fresh hub: ${HUB_GOGC:+GOGC=$HUB_GOGC }${HUB_BIN:-amqphub} serve --data-dir <tmp> --amqp-addr $AMQP --amqps-addr $AMQPS --https-addr $HTTPS (pid $HUB_PID)"
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) amqphub $(cd "$REPO" && git rev-parse --short HEAD), $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r), ulimit -n $(ulimit -n)"

bench() { # bench ARGS...: one run against the hub, with the command first
	local common=(--hub "<iothubowner connection string>" --ca "<data>/tls/ca.pem" --rest-url "https://$HTTPS" --hub-pid "<hub pid>")
	echo
	echo "\$ amqphub bench $* ${common[*]}"
	"$WORK/amqphub" bench "$@" --hub "$HUB_CS" --ca "$WORK/hub/tls/ca.pem" --rest-url "https://$HTTPS" --hub-pid "$HUB_PID" 2>/dev/null ||
		echo "(failed: exit $?)"
}

for r in $(seq "$ROUNDS"); do
	for s in $SCENARIOS; do
		start_hub
		case $s in
		d2c)
			for client in raw go-amqp; do
				bench d2c --client $client --amqp-url amqp://$AMQP --duration 15s
				bench d2c --client $client --amqp-url amqps://$AMQPS --duration 15s
			done
			bench d2c --client raw --amqp-url amqp://$AMQP --duration 15s --connections 16
			bench d2c --client raw --amqp-url amqp://$AMQP --duration 15s --rate 50000
			;;
		e2e)
			for client in raw go-amqp; do
				bench e2e --client $client --amqp-url amqp://$AMQP --rate 20000 --duration 15s
			done
			bench e2e --client raw --amqp-url amqps://$AMQPS --rate 20000 --duration 15s
			;;
		read)
			for client in raw go-amqp; do
				bench read --client $client --amqp-url amqp://$AMQP --messages 1000000
			done
			;;
		c2d)
			bench c2d --amqp-url amqp://$AMQP --connections 64 --duration 15s
			bench c2d --amqp-url amqp://$AMQP --connections 256 --duration 15s
			;;
		connections)
			# The generator's Go TLS client offers a post-quantum key share
			# by default; GODEBUG=tlsmlkem=0 makes its handshakes look like
			# the classic X25519 ones of device TLS stacks.
			bench connections --client raw --amqp-url amqps://$AMQPS --connections "$CONNECTIONS" \
				--hold 20s --source-ips 127.0.0.2-127.0.0.5 --hub-pprof "http://$PPROF"
			start_hub # RSS never shrinks: a second run on the same hub would reuse the first one's pages
			echo "(with GODEBUG=tlsmlkem=0 for the load generator)"
			GODEBUG=tlsmlkem=0 bench connections --client raw --amqp-url amqps://$AMQPS --connections "$CONNECTIONS" \
				--hold 20s --source-ips 127.0.0.2-127.0.0.5 --hub-pprof "http://$PPROF"
			;;
		*) echo "unknown scenario $s" >&2; exit 2 ;;
		esac
	done
done
