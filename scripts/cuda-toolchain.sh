#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit pieces that `cargo build --features cuda` needs, from
# PyPI wheels, into a git-ignored folder, and prints the environment to export:
#
#     eval "$(scripts/cuda-toolchain.sh)"
#     cargo build --release --features cuda
#
# No GPU and no driver are needed: the driver library (libcuda.so) is replaced at link
# time by a stub generated from the toolkit's cuda.h (see make_libcuda_stub). The binary
# then needs the real libcuda.so.1 (the driver) and the CUDA 13 libraries at run time.
#
# Why 13.0 exactly: the GPU machines' driver is CUDA 13.0, and candle-kernels ships PTX
# that the driver JIT-compiles; PTX written by a newer nvcc carries an ISA version an older
# driver rejects. cudarc 0.19 (candle 0.11's) also knows CUDA versions up to 13.4 only.
#
# Idempotent: a stamp file records the pinned versions; a second run only prints the
# environment. SECATEUR_CUDA_TOOLCHAIN overrides the folder (default: .cuda-toolchain/ at
# the repository root). Progress goes to stderr, the exports to stdout.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${SECATEUR_CUDA_TOOLCHAIN:-$root/.cuda-toolchain}"

# CUDA 13.0 (update 2 where it exists) of each piece. nvvm holds cicc, nvcc's front end.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)
# The compute capability candle-kernels compiles for: the H200 is sm_90.
compute_cap="${CUDA_COMPUTE_CAP:-90}"

cuda_home="$dir/py/nvidia/cu13"
stamp="$dir/installed.txt"

log() { echo "cuda-toolchain: $*" >&2; }

# A libcuda.so exporting every driver entry point of this toolkit's cuda.h (as the
# preprocessor resolves the _v2/_v3 aliases), with the driver's soname: the linker
# resolves cudarc's references against it and records libcuda.so.1, which the real
# driver provides at run time. Only names the 13.0 header declares are exported, so
# nothing is linked that a 13.0 driver lacks (Rust links with -z now: every symbol is
# bound at load time).
make_libcuda_stub() {
  local stubs="$cuda_home/lib/stubs" src
  mkdir -p "$stubs"
  src="$(mktemp --suffix=.c)"
  gcc -E -P "$cuda_home/include/cuda.h" | tr '\n' ' ' |
    grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' | sed -E 's/CUresult +//; s/ *\($//' |
    sort -u | sed -E 's/.*/int &(void) { return 999; }/' >"$src"
  if [ "$(wc -l <"$src")" -lt 100 ]; then
    log "too few driver entry points found in cuda.h ($(wc -l <"$src")); giving up"
    exit 1
  fi
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$src"
  rm -f "$src"
}

install() {
  local py
  py="$(command -v python3 || command -v python)"
  log "installing ${#wheels[@]} wheels into $dir/py (about 1.2 GB)"
  rm -rf "$dir/py"
  mkdir -p "$dir"
  # --only-binary: these exist only as wheels; --no-deps: the pins above are the whole set.
  "$py" -m pip install --quiet --no-deps --only-binary=:all: --target "$dir/py" \
    "${wheels[@]}" >&2
  # The wheels ship versioned sonames only; the linker's -lcublas wants libcublas.so.
  local lib base
  for lib in "$cuda_home"/lib/lib*.so.*; do
    base="${lib##*/}"
    base="${base%%.so.*}.so"
    [ -e "$cuda_home/lib/$base" ] || ln -s "${lib##*/}" "$cuda_home/lib/$base"
  done
  make_libcuda_stub
  printf '%s\n' "${wheels[@]}" >"$stamp"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(printf '%s\n' "${wheels[@]}")" ] &&
  [ -x "$cuda_home/bin/nvcc" ] && [ -f "$cuda_home/lib/stubs/libcuda.so" ]; then
  log "already installed in $dir"
else
  install
fi
log "nvcc: $("$cuda_home/bin/nvcc" --version | grep -o 'release [0-9.]*')"

cat <<EOF
export CUDA_HOME="$cuda_home"
export CUDA_PATH="$cuda_home"
export PATH="$cuda_home/bin:\$PATH"
export LIBRARY_PATH="$cuda_home/lib:$cuda_home/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=$compute_cap
EOF
