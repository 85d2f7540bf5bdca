/*
 * Claims the handoff and shows what arrived:
 *   pvdp_handoff_example [SOCKET] [TEXT]
 * SOCKET defaults to $PVDP_HANDOFF_SOCKET; the claim's deadline is
 * $PVDP_HANDOFF_TIMEOUT_MS (default 10000), busy retries included. With TEXT, writes it at the start of
 * the first mapped range (what the device sees at ranges[0].iova), cut to the
 * range's size, and prints the 32 bytes at offset 4096 of that range when the
 * range is long enough. (The client checked that the range lies in the memory.)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pvdp_handoff.h"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("PVDP_HANDOFF_SOCKET");
    struct pvdp_handoff h;
    char err[512];
    const char *timeout = getenv("PVDP_HANDOFF_TIMEOUT_MS");
    int timeout_ms = timeout && atoi(timeout) > 0 ? atoi(timeout) : 10000;
    if (pvdp_handoff_claim(path, timeout_ms, &h, err, sizeof err) != 0) {
        fprintf(stderr, "claim failed: %s\n", err);
        return 1;
    }
    printf("protocol %d resource %s iommu %s (%d)\n", h.protocol, h.resource, h.iommu_type, h.iommu_value);
    printf("window 0x%llx+0x%llx page 0x%llx (shift %d)\n", (unsigned long long)h.window_start, (unsigned long long)h.window_size,
           (unsigned long long)h.iommu_page_size, h.iommu_page_shift);
    printf("memory fd %d size 0x%llx hugetlb %d\n", h.memory_fd, (unsigned long long)h.memory_size, h.hugetlb);
    printf("container fd %d\n", h.container_fd);
    for (int i = 0; i < h.ngroups; i++) {
        printf("group %d fd %d functions", h.groups[i].group, h.groups[i].fd);
        for (int f = 0; f < h.groups[i].nfunctions; f++) printf(" %s", h.groups[i].functions[f]);
        printf("\n");
    }
    for (int i = 0; i < h.nranges; i++)
        printf("range iova 0x%llx size 0x%llx offset 0x%llx\n", (unsigned long long)h.ranges[i].iova, (unsigned long long)h.ranges[i].size,
               (unsigned long long)h.ranges[i].offset);
    if (argc > 2 && h.nranges > 0) {
        unsigned char *mem = mmap(NULL, h.memory_size, PROT_READ | PROT_WRITE, MAP_SHARED, h.memory_fd, 0);
        if (mem == MAP_FAILED) {
            perror("mmap");
            pvdp_handoff_close(&h);
            return 1;
        }
        unsigned char *range = mem + h.ranges[0].offset;
        uint64_t room = h.ranges[0].size;
        size_t len = strlen(argv[2]);
        if ((uint64_t)len > room) {
            fprintf(stderr, "TEXT is %zu bytes, the range only 0x%llx: cut\n", len, (unsigned long long)room);
            len = (size_t)room;
        }
        memcpy(range, argv[2], len);
        if (room >= 4096 + 32) {
            char shown[33];
            memcpy(shown, range + 4096, 32);
            shown[32] = 0;
            printf("read at 4096: %s\n", shown);
        } else {
            printf("read at 4096: (the range is only 0x%llx bytes)\n", (unsigned long long)room);
        }
        munmap(mem, h.memory_size);
    }
    pvdp_handoff_close(&h);
    return 0;
}
