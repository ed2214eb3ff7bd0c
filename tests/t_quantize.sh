#!/usr/bin/env bash
# tools/quantize on the tiny fixture model: the fp8 file holds the tensors docs/QUANTIZED.md names
# (e4m3 matrices + fp32 row scales, audio_head transposed, everything else as it was), NVFP4 refuses
# widths that are not multiples of 32, an already quantised input and an unknown precision are
# refused.  (The bytes themselves: tests/test_wquant.c here, gpu_fp8 roundtrip on the GPU.)
set -uo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d /tmp/hm-quantize-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
Q=bin/quantize
[ -x $Q ] || { echo "FAIL $Q not built (make bin/quantize)"; exit 1; }

if $Q --precision fp8 tests/fixtures/lm/model "$T/q8" 2>"$T/err"; then ok "fp8 quantize"; else bad "fp8 quantize: $(cat "$T/err")"; fi
F=$T/q8/HeartMuLa-oss-tiny/model.safetensors
[ -f "$T/q8/HeartMuLa-oss-tiny/config.json" ] && [ -f "$T/q8/gen_config.json" ] && ok "config files copied" || bad "config files"
# the JSON header (u64 length, then the text)
len=$(od -An -t u8 -N 8 "$F" | tr -d ' ')
H=$(tail -c +9 "$F" | head -c "$len")
has() { grep -q -- "$1" <<<"$H" && ok "$2" || bad "$2 (no $1)"; }
has '"backbone.layers.0.attn.q_proj.weight":{"dtype":"F8_E4M3","shape":\[64,64\]' "q_proj e4m3 [64, 64]"
has '"backbone.layers.0.attn.q_proj.weight_scale":{"dtype":"F32","shape":\[64\]' "q_proj row scales"
has '"decoder.layers.1.mlp.w2.weight":{"dtype":"F8_E4M3","shape":\[48,96\]' "decoder w2 e4m3"
has '"audio_head":{"dtype":"F8_E4M3","shape":\[7,69,48\]' "audio_head transposed [7, Va, Dd]"
has '"audio_head_scale":{"dtype":"F32","shape":\[7,69\]' "audio_head scales"
has '"codebook0_head.weight":{"dtype":"F8_E4M3"' "codebook0_head e4m3"
has '"heartmula.quantization":"fp8"' "metadata names the format"
grep -q '"text_embeddings.weight":{"dtype":"F8' <<<"$H" && bad "embeddings quantised" || ok "embeddings untouched"
grep -q '"backbone.layers.0.sa_norm.scale":{"dtype":"F8' <<<"$H" && bad "norms quantised" || ok "norms untouched"

$Q --precision nvfp4 tests/fixtures/lm/model "$T/q4" 2>"$T/err"; rc=$?
[ $rc = 1 ] && grep -q "not a multiple of 32\|width 48" "$T/err" && ok "nvfp4 refuses width 48" || bad "nvfp4 on width 48: rc=$rc $(cat "$T/err")"
$Q --precision fp8 "$T/q8" "$T/qq" 2>"$T/err"; rc=$?
[ $rc = 1 ] && grep -q "already quantised" "$T/err" && ok "quantised input refused" || bad "re-quantise: rc=$rc $(cat "$T/err")"
$Q --precision int4 tests/fixtures/lm/model "$T/x" 2>/dev/null; rc=$?
[ $rc = 2 ] && ok "unknown precision refused" || bad "unknown precision: rc=$rc"
[ $fails = 0 ]
