#!/usr/bin/env bash
# The systemd units install cleanly and pass `systemd-analyze verify` (no unknown keys, the
# ExecStart binaries exist); the MPS daemon's unit comes with them unless the config says mps: off.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
launch/install-systemd --dest "$dest" --no-reload
grep -q "ExecStart=$PWD/bin/hm-%i" "$dest/heartmula-stage@.service"
grep -q "^Environment=CUDA_MPS_PIPE_DIRECTORY=/run/heartmula/mps$" "$dest/heartmula-stage@.service"
grep -q "^Wants=heartmula-mps.service$" "$dest/heartmula-stage@.service"
grep -q "heartmula-mps.service" "$dest/heartmula.target"
if grep -qE "@[A-Z_]+@" "$dest"/heartmula*; then echo "a placeholder was left in the units"; exit 1; fi
# mps: off installs neither the daemon's unit nor its environment
off=$(mktemp -d)
trap 'rm -rf "$dest" "$off"' EXIT
printf 'mps: "off"\n' >"$off/p.yaml"
launch/install-systemd --config "$off/p.yaml" --dest "$off" --no-reload
if [ -e "$off/heartmula-mps.service" ] || cat "$off/heartmula-stage@.service" "$off/heartmula.target" | grep -v '^#' | grep -q mps; then
  echo "mps: off still installed the MPS daemon's unit"; exit 1
fi
# verify one instance of each stage (the template itself cannot be verified)
for s in tokenizer backbone draft-verifier flow-matching vocoder; do
  cp "$dest/heartmula-stage@.service" "$dest/heartmula-stage@$s.service"
done
out=$(cd "$dest" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no ./heartmula-stage@?*.service ./heartmula-mps.service ./heartmula.target 2>&1 || true)
echo "$out"
# systemd-analyze complains about things outside our units on a machine without systemd as PID 1
# (e.g. missing default units); fail only on lines that name our files.
if echo "$out" | grep -E "heartmula" | grep -vE "Failed to (connect|create)|not running|System has not been booted" ; then
  echo "systemd-analyze found problems in the units"; exit 1
fi
echo "units verified"
