#!/usr/bin/env bash
# Makes sure clang with libFuzzer is on this machine for the C client's fuzz
# test: Debian's clang and its runtime libraries (libclang-rt-dev carries
# libclang_rt.fuzzer). Does nothing when a fuzz target already links. Never
# fails the run itself: the fuzz test fails, with the reason, where CI requires it.
set -uo pipefail

links() {
  local dir rc
  dir=$(mktemp -d /tmp/pvdp-clang-XXXXXX)
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$dir/t.c"
  clang -fsanitize=fuzzer,address,undefined "$dir/t.c" -o "$dir/t" >/dev/null 2>&1
  rc=$?
  rm -rf "$dir"
  return $rc
}

if command -v clang >/dev/null 2>&1 && links; then
  echo "clang with libFuzzer: present ($(clang --version | head -n 1))"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "clang with libFuzzer is missing and cannot be installed here (needs root and apt-get)"
  exit 0
fi
echo "Installing clang and libFuzzer from Debian"
log=$(mktemp /tmp/pvdp-apt-XXXXXX.log)
if { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q clang libclang-rt-dev; } >"$log" 2>&1 && links; then
  echo "clang with libFuzzer: installed ($(clang --version | head -n 1))"
else
  echo "Could not install clang with libFuzzer; the last lines of apt-get:"
  tail -n 5 "$log"
fi
rm -f "$log"
exit 0
