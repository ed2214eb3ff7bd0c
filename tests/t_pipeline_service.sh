#!/usr/bin/env bash
# End to end against a long-running pipeline (hm-launch, five stage processes, demo-sized random
# model): WAV read back, 8 concurrent requests, streaming (audio on disk before the song's last
# frame), rogue peers on every stage endpoint, kill -9 of each stage mid-song (the song completes
# identical to an undisturbed run), and one-line errors for bad inputs while the stages keep
# serving.
set -uo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d /tmp/hm-e2e-XXXXXX)
M=$T/model
LPID=
fails=0
cleanup() {
  if [ -n "$LPID" ]; then kill "$LPID" 2>/dev/null; wait "$LPID" 2>/dev/null; fi
  [ "$fails" = 0 ] && rm -rf "$T" || echo "(kept $T for inspection)"
}
trap cleanup EXIT
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
step() { echo "-- $*"; }

step "demo-sized model"
mkdir -p "$M"
read -r _ bos _ eos < <(bin/mktokenizer --vocab 1024 --out "$M/tokenizer.json" tools/mktokenizer/corpus.txt 2>/dev/null)
bin/mkmodel --preset demo -o "$M" --seed 1 >/dev/null 2>&1 && bin/mkcodec --preset demo -o "$M" --seed 2 >/dev/null 2>&1 || { bad "model generation"; exit 1; }
printf '{"text_bos_id": %d, "text_eos_id": %d, "audio_eos_id": 8193, "empty_id": 0}\n' "$bos" "$eos" > "$M/gen_config.json"
# two replicas of every stage but the tokenizer: requests are spread by id, and every message of
# one song meets the same replica
cat > "$T/p.yaml" <<EOY
model_dir: $M
run_dir: $T/run
request_timeout_ms: 3000
stages:
  backbone: {replicas: 2}
  draft-verifier: {replicas: 2}
  flow-matching: {replicas: 2}
  vocoder: {replicas: 2}
EOY
bin/hm-launch --config "$T/p.yaml" > "$T/launch.log" 2>&1 &
LPID=$!
for _ in $(seq 600); do [ -f "$T/run/ready" ] && break; sleep 0.1; done
[ -f "$T/run/ready" ] && ok "pipeline ready" || { bad "pipeline did not start"; cat "$T/launch.log"; exit 1; }
n=$(grep -c "ready (" "$T/launch.log")
[ "$n" = 9 ] && ok "9 stage processes ready (replicas)" || bad "$n stage processes ready, expected 9"

H=(bin/heartmula --config "$T/p.yaml" --timeout 180)
gen() { "${H[@]}" generate --tags-file tools/demo/tags.txt --lyrics-file tools/demo/lyrics.txt "$@"; }
# frames reported by the CLI ("wrote F: N frames, ...") must match the file read back
check_wav() { # file cli-output
  local n info
  n=$(sed -n 's/^wrote [^:]*: \([0-9]*\) frames.*/\1/p' "$2")
  info=$(bin/wavinfo "$1" 2>&1) || { bad "$1 unreadable: $info"; return; }
  [ -n "$n" ] && [ "$info" = "48000 2 $((n * 3840)) wav-pcm16" ] && ok "$1: $info ($n frames)" || bad "$1: '$info' for '$n' frames"
}
frames_done() { "${H[@]}" stats 2>/dev/null | awk '/^draft-verifier/ { for (i = 1; i <= NF; i++) if ($i ~ /^c\.frames=/) { sub("c.frames=", "", $i); n += $i } } END { print n + 0 }'; }

step "baseline song"
gen --seed 7 --max-seconds 12 -o "$T/base.wav" > "$T/base.out" 2>&1 || bad "baseline: $(cat "$T/base.out")"
check_wav "$T/base.wav" "$T/base.out"

step "8 concurrent requests"
pids=()
for i in 1 2 3 4 5 6 7 8; do
  gen --seed $((100 + i)) --max-seconds 3 -o "$T/c$i.wav" > "$T/c$i.out" 2>&1 &
  pids+=($!)
done
for i in 1 2 3 4 5 6 7 8; do
  wait "${pids[$((i - 1))]}" && check_wav "$T/c$i.wav" "$T/c$i.out" || bad "concurrent $i: $(cat "$T/c$i.out")"
done

step "streaming: the first window's audio is on disk before the song's last frame"
before=$(frames_done)
gen --seed 9 --max-seconds 60 --topk 1 --codec-steps 2 -o "$T/stream.wav" > "$T/stream.out" 2>&1 &
gpid=$!
seen=
for _ in $(seq 1200); do
  part=$(ls "$T"/stream.wav.tmp.* 2>/dev/null | head -1)
  if [ -n "$part" ] && [ "$(stat -c %s "$part" 2>/dev/null || echo 0)" -gt 1000000 ]; then
    now=$(frames_done); seen=$((now - before)); break
  fi
  kill -0 $gpid 2>/dev/null || break
  sleep 0.05
done
wait $gpid || bad "streaming song: $(cat "$T/stream.out")"
total=$(sed -n 's/^wrote [^:]*: \([0-9]*\) frames.*/\1/p' "$T/stream.out")
if [ -n "$seen" ] && [ -n "$total" ] && [ "$seen" -lt "$total" ]; then ok "audio written after $seen of $total frames"; else bad "no audio before the last frame (seen '$seen' of '$total')"; fi

step "rogue peers on every stage endpoint"
for s in tokenizer backbone draft-verifier flow-matching vocoder; do
  kind=push; [ $s = backbone ] && kind=dealer
  bin/rogue "ipc://$T/run/$s.sock" $kind 2>>"$T/rogue.err"
done
sleep 0.5
for s in tokenizer backbone draft-verifier flow-matching vocoder; do
  n=$(grep -c "^.* $s\[[0-9]*\] .*\(rejected\|malformed\|takes\|bad\|unknown\)" "$T/launch.log" || true)
  [ "$n" -ge 3 ] && ok "$s logged $n rejections" || bad "$s logged $n rejections"
done
grep -q "killed by signal\|exited with status" "$T/launch.log" && bad "a stage died on rogue input" || ok "no stage died"
gen --seed 7 --max-seconds 12 -o "$T/after-rogue.wav" > "$T/after-rogue.out" 2>&1 && cmp -s "$T/base.wav" "$T/after-rogue.wav" \
  && ok "the next request is served (identical to the baseline)" || bad "after rogue: $(cat "$T/after-rogue.out")"

step "kill -9 each stage mid-song"
# flow-matching twice: early, it has the song's first frames and is then sent the rest (it answers
# "restarted mid-song" and the CLI sends the request again); later, it holds the whole song
for k in tokenizer backbone draft-verifier flow-matching:early flow-matching vocoder; do
  s=${k%%:*}
  case $k in flow-matching:early) delay=0.9 ;; flow-matching) delay=2.5 ;; vocoder) delay=4 ;; *) delay=0.7 ;; esac
  gen --seed 7 --max-seconds 12 -o "$T/kill-${k/:/-}.wav" > "$T/kill-${k/:/-}.out" 2>&1 &
  gpid=$!
  sleep $delay
  victim=$(pgrep -d, -f "hm-$s --config $T/p.yaml")   # every replica of the stage
  [ -n "$victim" ] && kill -9 ${victim//,/ }
  if wait $gpid && cmp -s "$T/base.wav" "$T/kill-${k/:/-}.wav"; then ok "$k killed (pid ${victim:-none}): song identical to the baseline"
  else bad "$k killed: $(tail -3 "$T/kill-${k/:/-}.out")"; fi
  for _ in $(seq 100); do [ "$(pgrep -c -f "hm-$s --config $T/p.yaml")" -ge 1 ] && break; sleep 0.1; done
  sleep 1
done
step "draft-verifier down for longer than a restart takes here"
# the launcher stopped, so the killed replicas stay down for 12 s (a restart behind the launcher's
# backoff, up to 30 s, can take that long): the tokenizer keeps the prompt and sends it when draft-verifier is back (it used to
# answer ERROR after 10 s, which ends the song).  The second's pause lets the tokenizer's socket
# notice the dead peer: a prompt sent in that instant is lost with it, as one a stage receives and
# then dies; the CLI sends such a request again when the stage comes back.
n0=$(wc -l < "$T/launch.log")
kill -STOP "$LPID"
victim=$(pgrep -d, -f "hm-draft-verifier --config $T/p.yaml")
[ -n "$victim" ] && kill -9 ${victim//,/ }
sleep 1
gen --seed 7 --max-seconds 12 -o "$T/dv-down.wav" > "$T/dv-down.out" 2>&1 &
gpid=$!
sleep 12
kill -CONT "$LPID"
if wait $gpid && cmp -s "$T/base.wav" "$T/dv-down.wav"; then ok "draft-verifier down 12 s: song identical to the baseline"
else bad "draft-verifier down 12 s: $(tail -3 "$T/dv-down.out")"; fi
# delivered late, or replaced by the CLI's copy when draft-verifier came back (whichever came first)
tail -n +$((n0 + 1)) "$T/launch.log" > "$T/dv-down.log"
grep -q "tokenizer.*draft-verifier\[[01]\] is not connected" "$T/dv-down.log" &&
  grep -q "prompt delivered to draft-verifier\[[01]\] after 1[0-9]\.[0-9] s\|sent again: its waiting prompt is replaced" "$T/dv-down.log" &&
  ok "the tokenizer held the prompt while draft-verifier was down" || bad "the prompt did not wait: $(grep -h 'tokenizer' "$T/dv-down.log" | tail -3)"
for _ in $(seq 100); do [ "$(pgrep -c -f "hm-draft-verifier --config $T/p.yaml")" -ge 2 ] && break; sleep 0.1; done
# a song sent again after a kill may be written twice: the CLI returns at the first AUDIO_DONE while
# the other attempt's file can still be in progress (a live writer's NAME.tmp.PID); wait for those
for _ in $(seq 150); do ls "$T"/*.tmp.* >/dev/null 2>&1 || break; sleep 0.1; done
ls "$T"/*.tmp.* >/dev/null 2>&1 && bad "partial files left: $(ls "$T"/*.tmp.*)" || ok "no partial file left by the killed vocoder"
n=$(grep -c "killed by signal 9" "$T/launch.log" || true)
[ "$n" -ge 10 ] && ok "the launcher restarted $n killed stages" || bad "launcher saw $n kills"

step "bad inputs: one-line errors"
one_line() { # needle, command...
  local needle=$1; shift
  local out; out=$("$@" 2>&1); local rc=$?
  local lines; lines=$(printf '%s\n' "$out" | grep -c .)
  if [ $rc -ne 0 ] && [ "$lines" = 1 ] && printf '%s' "$out" | grep -q -- "$needle"; then ok "$needle"; else bad "expected one line with '$needle' (rc $rc): $out"; fi
}
head -c 786432 /dev/urandom | base64 -w 100 | head -c 1048576 > "$T/lyrics-1mb.txt"
one_line "does not fit" "${H[@]}" generate --tags pop --lyrics-file "$T/lyrics-1mb.txt" -o "$T/x.wav"
printf 'bad \377\376 text' > "$T/bad-utf8.txt"
one_line "invalid UTF-8" "${H[@]}" generate --tags pop --lyrics-file "$T/bad-utf8.txt" -o "$T/x.wav"
one_line "exceeds the backbone" "${H[@]}" generate --tags pop --lyrics la --max-seconds 6000 -o "$T/x.wav"
printf 'model_dir: %s\nbogus_key: 1\n' "$M" > "$T/bad.yaml"
one_line "unknown key 'bogus_key'" bin/heartmula --config "$T/bad.yaml" generate --tags a --lyrics b -o "$T/x.wav"
one_line "does not exist" bin/heartmula generate --model-dir "$T/nope" --tags a --lyrics b -o "$T/x.wav"
cp -r "$M" "$T/nofile" && rm "$T"/nofile/HeartCodec-oss/config.json
one_line "HeartCodec-oss/config.json" bin/heartmula generate --model-dir "$T/nofile" --tags a --lyrics b -o "$T/x.wav"
cp -r "$M" "$T/trunc" && truncate -s 100000 "$T"/trunc/HeartMuLa-oss-demo/model.safetensors
one_line "model.safetensors" bin/heartmula generate --model-dir "$T/trunc" --tags a --lyrics b -o "$T/x.wav"
cp -r "$M" "$T/shape" && sed -i 's/"intermediate_dim": 768/"intermediate_dim": 512/' "$T"/shape/HeartMuLa-oss-demo/config.json
one_line "shape" bin/heartmula generate --model-dir "$T/shape" --tags a --lyrics b -o "$T/x.wav"
one_line "File too large" bash -c "ulimit -f 400; exec bin/heartmula generate --model-dir '$M' --tags a --lyrics b --max-seconds 12 -o '$T/full.wav'"
ls "$T"/full.wav* >/dev/null 2>&1 && bad "a partial file was left behind" || ok "no partial file left"
gen --seed 7 --max-seconds 12 -o "$T/after-bad.wav" > "$T/after-bad.out" 2>&1 && cmp -s "$T/base.wav" "$T/after-bad.wav" \
  && ok "the stages still serve (identical to the baseline)" || bad "after bad inputs: $(cat "$T/after-bad.out")"

echo "$fails failure(s)"
[ "$fails" = 0 ]
