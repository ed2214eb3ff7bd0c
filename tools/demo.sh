#!/usr/bin/env bash
# `make demo`: make the tiny random-weight demo model (real file formats, generated here) if it is
# not there yet, then run the whole pipeline (five stage processes, CPU backend, the default
# pipeline.yaml) on example tags and lyrics and write out/demo.wav.
set -euo pipefail
cd "$(dirname "$0")/.."
model=out/demo-model
if [ ! -f "$model/.complete" ]; then
  echo "== making the demo model in $model"
  rm -rf "$model"; mkdir -p "$model"
  read -r _ bos _ eos < <(bin/mktokenizer --vocab 1024 --out "$model/tokenizer.json" tools/mktokenizer/corpus.txt)
  bin/mkmodel --preset demo -o "$model" --seed 1
  bin/mkcodec --preset demo -o "$model" --seed 2
  # the text ids of this tokenizer: bos/eos follow its vocabulary (the release uses 128000/128001)
  printf '{"text_bos_id": %d, "text_eos_id": %d, "audio_eos_id": 8193, "empty_id": 0}\n' "$bos" "$eos" > "$model/gen_config.json"
  touch "$model/.complete"
fi
echo "== generating out/demo.wav (10 s song, CPU backend)"
bin/heartmula generate --config pipeline.yaml --model-dir "$model" \
  --tags-file tools/demo/tags.txt --lyrics-file tools/demo/lyrics.txt \
  --max-seconds 10 --seed 42 -o out/demo.wav
ls -l out/demo.wav
