#!/usr/bin/env bash
# The systemd units install cleanly and pass `systemd-analyze verify` (no unknown keys, the
# ExecStart binaries exist); the MPS daemon's unit comes with them unless the config says mps: off;
# each stage's watchdog is the pipeline's.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
launch/install-systemd --dest "$dest" --no-reload
grep -q "ExecStart=$PWD/bin/hm-%i" "$dest/heartmula-stage@.service"
grep -q "^Environment=CUDA_MPS_PIPE_DIRECTORY=/run/heartmula/mps$" "$dest/heartmula-stage@.service"
grep -q "^Wants=heartmula-mps.service$" "$dest/heartmula-stage@.service"
grep -q "heartmula-mps.service" "$dest/heartmula.target"
# a dead MPS daemon is started again (its pid file is where the daemon writes it)
grep -qx "Restart=on-failure" "$dest/heartmula-mps.service"
grep -qx "PIDFile=/run/heartmula/mps/nvidia-cuda-mps-control.pid" "$dest/heartmula-mps.service"
if grep -rqE "@[A-Z_]+@" "$dest"; then echo "a placeholder was left in the units"; exit 1; fi
# each stage's watchdog as the pipeline resolves it, in a drop-in: 120 s for the shipped (cpu)
# pipeline; 15 s for a cuda stage unless stages.<name>.watchdog_ms says otherwise
grep -qx "WatchdogSec=120000ms" "$dest/heartmula-stage@backbone.service.d/watchdog.conf"
wd=$(mktemp -d)
trap 'rm -rf "$dest" "$wd"' EXIT
printf 'backend: cuda\nstages:\n  tokenizer: {backend: cpu}\n  vocoder: {watchdog_ms: 40000}\n' >"$wd/p.yaml"
launch/install-systemd --config "$wd/p.yaml" --dest "$wd" --no-reload
for s in backbone:15000 draft-verifier:15000 flow-matching:15000 vocoder:40000 tokenizer:120000; do
  got=$(grep '^WatchdogSec=' "$wd/heartmula-stage@${s%%:*}.service.d/watchdog.conf")
  [ "$got" = "WatchdogSec=${s##*:}ms" ] || { echo "${s%%:*}: $got, want ${s##*:}ms"; exit 1; }
done
# mps: off installs neither the daemon's unit nor its environment
off=$(mktemp -d)
trap 'rm -rf "$dest" "$wd" "$off"' EXIT
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
