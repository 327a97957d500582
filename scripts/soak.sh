#!/usr/bin/env bash
# Soak: the randomized crash tests (crates/vessel/tests/crash.rs, both mixes: lifecycle, and
# lifecycle with volumes and snapshots) with fresh random seeds, one seed per run, for a while. Lifecycle requests, daemon kill -9 and QEMU kills on real guests;
# every run checks the invariants of docs/vm-lifecycle.md once everything settled.
#
#   scripts/soak.sh [MINUTES]        default 30; VESSEL_CRASH_STEPS sets the steps per seed (40)
#
# Each seed's result goes to target/soak/<seed>.log (kept for failures only); the summary at the
# end gives the seeds passed and failed, the longest run of passes, and the totals of requests,
# daemon kills and QEMU kills. Replay a failed seed with
#   VESSEL_CRASH_SEEDS=<seed> cargo test -p vessel --test crash -- randomized --nocapture
# (the same sequence of requests; the timing, and so the interleaving, differs between runs).
# The machine may be shared: run it under `nice -n 10`.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
logs=target/soak
mkdir -p "$logs"
# Run copies of the binaries, so that rebuilding the tree meanwhile does not change what is tested.
test_bin=$(cargo test -p vessel --test crash --no-run --message-format=json 2>/dev/null |
	sed -n 's/.*"executable":"\([^"]*\/crash-[^"]*\)".*/\1/p' | tail -1)
[ -n "$test_bin" ] || { echo "soak: could not build the crash test" >&2; exit 1; }
bin="$logs/bin"
mkdir -p "$bin"
cp "$test_bin" "$bin/crash"
cp target/debug/vessel "$bin/vessel"
export VESSEL_TEST_BIN="$PWD/$bin/vessel"
end=$((SECONDS + minutes * 60))
passed=0 failed=0 streak=0 best=0 requests=0 daemon_kills=0 qemu_kills=0
failures=()
while [ "$SECONDS" -lt "$end" ]; do
	seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
	log="$logs/$seed.log"
	if VESSEL_CRASH_SEEDS="$seed" "$bin/crash" randomized --nocapture >"$log" 2>&1; then
		# "crash test seed S (Mix): R requests (F refused), D daemon kills, Q QEMU kills, T s"
		lines=$(grep "^crash test seed $seed " "$log" || true)
		echo "$lines"
		while read -r r d q; do
			[ -n "$q" ] || continue
			requests=$((requests + r))
			daemon_kills=$((daemon_kills + d))
			qemu_kills=$((qemu_kills + q))
		done < <(echo "$lines" |
			sed -E 's/.*: ([0-9]+) requests .*, ([0-9]+) daemon kills, ([0-9]+) QEMU kills.*/\1 \2 \3/')
		passed=$((passed + 1))
		streak=$((streak + 1))
		[ "$streak" -gt "$best" ] && best=$streak
		rm -f "$log"
	else
		echo "FAILED: seed $seed (log: $log)"
		grep -m1 -A2 "panicked" "$log" || tail -5 "$log"
		failed=$((failed + 1))
		streak=0
		failures+=("$seed")
	fi
done
echo "soak: $passed seeds passed, $failed failed${failures:+ (${failures[*]})}; longest run of passes: $best;" \
	"$requests requests, $daemon_kills daemon kills, $qemu_kills QEMU kills in $minutes min"
[ "$failed" -eq 0 ]
