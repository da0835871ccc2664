#!/usr/bin/env bash
# Copies the shared libraries that the installed programs need, other than
# the C/C++ runtime and the GPU driver, next to them (PREFIX/lib), so the
# runtime image needs no -dev packages. The Dockerfile's runtime stage uses
# the result; CI runs it too and starts the collected server.
#   usage: docker/collect-runtime.sh PREFIX
set -euo pipefail
prefix=${1:?usage: docker/collect-runtime.sh PREFIX}
mkdir -p "$prefix/lib"
for bin in "$prefix"/bin/*; do
  ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  case $(basename "$lib") in
    libc.so*|libm.so*|ld-linux*|libpthread*|libdl.so*|librt.so*|libgcc_s*|libstdc++*|libcuda.so*) ;;
    *) cp -L "$lib" "$prefix/lib/" ;;
  esac
done
echo "collect-runtime: $(ls "$prefix/lib" | wc -l) libraries in $prefix/lib"
