# Trivial payload: the ppc64le node and the cross-compiled probe (once per test group). All must succeed.
set -e
node ./node-check.mjs
for g in $(echo "$PVDP_GROUPS" | tr , ' '); do
  ./vfio_probe "$g"
done
