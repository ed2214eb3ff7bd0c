#!/usr/bin/env bash
# Runs every test binary and test script; prints one closing line "N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
pass=0; fail=0; failed=()
run() {  # name, command...
  local name=$1; shift
  local log="build/test-logs/$name.log"
  mkdir -p build/test-logs
  local t0=$SECONDS
  if "$@" >"$log" 2>&1; then
    pass=$((pass+1)); printf 'PASS %-40s %3ds\n' "$name" $((SECONDS-t0))
  else
    fail=$((fail+1)); failed+=("$name"); printf 'FAIL %-40s %3ds (log: %s)\n' "$name" $((SECONDS-t0)) "$log"
    tail -n 30 "$log" | sed 's/^/    /'
  fi
}
for t in build/tests/test_*; do
  [ -x "$t" ] || continue
  run "$(basename "$t")" "$t"
done
for f in build/fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f"); corpus="tests/corpus/${name#fuzz_}"
  mkdir -p "build/fuzz-work/$name"
  run "$name" "$f" -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=2048 "build/fuzz-work/$name" $( [ -d "$corpus" ] && echo "$corpus" )
done
for s in tests/t_*.sh; do
  [ -f "$s" ] || continue
  run "$(basename "$s" .sh)" bash "$s"
done
echo
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
