#!/usr/bin/env bash
# Install NVRTC (libnvrtc), the CUDA runtime headers and the nvcc wheel (crt headers, ptxas)
# from PyPI wheels into the repository's gitignored .cuda/ folder, so that the NVRTC-only
# kernel compile test and the ptxas resource report run on machines without a CUDA toolkit.
#
# Usage: scripts/install_nvrtc.sh [--print-env]
# Prints the environment exports to use afterwards (eval "$(scripts/install_nvrtc.sh --print-env)").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cuda/site"
ver="${ETS_CUDA_WHEEL_VERSION:-12.8.*}"
py="${PYTHON:-python3}"

print_env() {
    local nv="$dest/nvidia"
    local libdirs="" incdirs=""
    for d in "$nv"/cuda_nvrtc/lib "$nv"/cuda_runtime/lib; do
        [ -d "$d" ] && libdirs="${libdirs:+$libdirs:}$d"
    done
    for d in "$nv"/cuda_runtime/include "$nv"/cuda_nvcc/include; do
        [ -d "$d" ] && incdirs="${incdirs:+$incdirs:}$d"
    done
    echo "export LD_LIBRARY_PATH=\"$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    echo "export ETS_CUDA_INCLUDE=\"$incdirs\""
    [ -x "$nv/cuda_nvcc/bin/ptxas" ] && echo "export ETS_PTXAS=\"$nv/cuda_nvcc/bin/ptxas\""
    return 0
}

if [ "${1:-}" = "--print-env" ] && [ -d "$dest/nvidia/cuda_nvrtc" ]; then
    print_env
    exit 0
fi

mkdir -p "$dest"
if [ ! -d "$dest/nvidia/cuda_nvrtc/lib" ] || [ ! -d "$dest/nvidia/cuda_nvcc" ]; then
    "$py" -m pip install --quiet --no-deps --upgrade --target "$dest" \
        "nvidia-cuda-nvrtc-cu12==$ver" "nvidia-cuda-runtime-cu12==$ver" "nvidia-cuda-nvcc-cu12==$ver" >&2
fi

# The wheels ship only versioned sonames (libnvrtc.so.12); the loader also accepts that name,
# but add the plain name too for tools that dlopen "libnvrtc.so".
lib="$dest/nvidia/cuda_nvrtc/lib"
if [ -d "$lib" ] && [ ! -e "$lib/libnvrtc.so" ]; then
    so="$(ls "$lib"/libnvrtc.so.* 2>/dev/null | grep -v builtins | head -n1 || true)"
    [ -n "$so" ] && ln -sf "$(basename "$so")" "$lib/libnvrtc.so"
fi
chmod +x "$dest"/nvidia/cuda_nvcc/bin/* 2>/dev/null || true
print_env
