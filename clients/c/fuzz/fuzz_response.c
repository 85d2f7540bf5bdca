/*
 * libFuzzer target for the C client's message parsing: the plugin's answer
 * line (result, error, description) as the client sees it after recvmsg.
 * Built with the client's source included, so its internal readers are
 * fuzzed as they are, with nothing exported for the purpose:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       clients/c/fuzz/fuzz_response.c -o fuzz_response
 *   ./fuzz_response -max_total_time=60 CORPUS_DIR
 *
 * The first byte picks how many fds "arrived" (0..19); the rest is the line,
 * cut at its first newline as the client cuts it. Besides the sanitizers'
 * findings, a parse that succeeds must describe what it claims to: the
 * invariants below abort when it does not.
 */
#include "../pvdp_handoff.c"

#include <stdint.h>

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "invariant broken: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct pvdp_handoff h;
    char err[256];
    char *line, *nl;
    int nfds, rc;
    if (size < 1) return 0;
    nfds = data[0] % 20;
    line = malloc(size);
    if (!line) return 0;
    memcpy(line, data + 1, size - 1);
    line[size - 1] = 0;
    nl = memchr(line, '\n', size - 1);
    if (nl) *nl = 0;
    reset(&h);
    err[0] = 0;
    rc = parse_response(line, nfds, &h, err, sizeof err);
    check(rc == 0 || rc == 1 || rc == -1, "parse_response returns 0, 1 or -1");
    if (rc != 0) {
        check(err[0] != 0 && memchr(err, 0, sizeof err) != NULL, "a failure says why, NUL-terminated");
        check(rc != 1 || strncmp(err, "PVDP_HANDOFF_BUSY: ", 19) == 0, "BUSY is reported as PVDP_HANDOFF_BUSY");
    } else {
        check(h.protocol == PVDP_HANDOFF_PROTOCOL, "protocol");
        check(h.ngroups >= 1 && h.ngroups <= PVDP_HANDOFF_MAX_GROUPS && nfds == 2 + h.ngroups, "groups match the fds");
        check(h.nranges >= 0 && h.nranges <= PVDP_HANDOFF_MAX_RANGES, "range count");
        check(h.window_size > 0 && h.window_start <= UINT64_MAX - h.window_size, "window inside 2^64");
        for (int i = 0; i < h.ngroups; i++) {
            check(h.groups[i].nfunctions >= 0 && h.groups[i].nfunctions <= PVDP_HANDOFF_MAX_FUNCTIONS, "function count");
            for (int f = 0; f < h.groups[i].nfunctions; f++)
                check(memchr(h.groups[i].functions[f], 0, sizeof h.groups[i].functions[f]) != NULL, "function name terminated");
        }
        for (int i = 0; i < h.nranges; i++) {
            const struct pvdp_handoff_range *r = &h.ranges[i];
            check(r->iova >= h.window_start && r->iova - h.window_start <= h.window_size && r->size <= h.window_size - (r->iova - h.window_start),
                  "range inside the window");
            check(r->offset <= h.memory_size && r->size <= h.memory_size - r->offset, "range inside the memory");
        }
        check(memchr(h.resource, 0, sizeof h.resource) != NULL && memchr(h.iommu_type, 0, sizeof h.iommu_type) != NULL, "strings terminated");
        check(h.description_json != NULL && h.description_json[0] == '{', "the description is kept");
        free(h.description_json);
    }
    free(line);
    return 0;
}
