#!/usr/bin/env bash
# Fuzzes request parsing and spec validation for a bounded time (default 60 s): CI runs it when
# cargo-fuzz and a nightly toolchain are installed (cargo install cargo-fuzz; rustup toolchain
# install nightly). A crash leaves its input in fuzz/artifacts/request/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
mkdir -p corpus/request
# Seeds: a few real request bodies, so the fuzzer starts from the API's shapes.
printf '{"name":"web1","cpus":1,"memory_mib":256,"kernel":"/boot/vmlinuz"}' > corpus/request/create
printf '{"cpus":2,"memory_mib":512}' > corpus/request/edit
printf 'POST /v1/vms/web1/start' > corpus/request/route
printf 'vsl_0123456789abcdef_%064d' 0 > corpus/request/token
exec cargo +nightly fuzz run request corpus/request -- -max_total_time="$seconds" -rss_limit_mb=2048
