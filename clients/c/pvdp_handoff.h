/*
 * pvdp_handoff: claim the VFIO container that power-vfio-device-plugin prepared
 * for this container (handoff protocol version 1, docs/handoff-protocol.md).
 * C99, POSIX, Linux; no dependencies. Copy both files into your project.
 *
 *   struct pvdp_handoff h;
 *   char err[256];
 *   if (pvdp_handoff_claim(getenv("PVDP_HANDOFF_SOCKET"), 10000, &h, err, sizeof err) != 0) {
 *       fprintf(stderr, "%s\n", err);
 *       return 1;
 *   }
 *   void *mem = mmap(NULL, h.memory_size, PROT_READ | PROT_WRITE, MAP_SHARED, h.memory_fd, 0);
 *   // The device sees mem + ranges[i].offset at ranges[i].iova. The container's mm is the
 *   // plugin's: MAP_DMA/UNMAP_DMA from this process fail with EPERM; use the pre-mapped ranges.
 *   // Device fds: ioctl(h.groups[0].fd, VFIO_GROUP_GET_DEVICE_FD, h.groups[0].functions[0]).
 *   ...
 *   pvdp_handoff_close(&h);   // or just exit: the kernel releases everything
 */
#ifndef PVDP_HANDOFF_H
#define PVDP_HANDOFF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PVDP_HANDOFF_PROTOCOL 1
#define PVDP_HANDOFF_MAX_GROUPS 16
#define PVDP_HANDOFF_MAX_FUNCTIONS 32
#define PVDP_HANDOFF_MAX_RANGES 64
/* Waits between attempts while the plugin answers PVDP_HANDOFF_BUSY: doubling, jittered. */
#define PVDP_HANDOFF_BUSY_FIRST_MS 10
#define PVDP_HANDOFF_BUSY_MAX_MS 1000

struct pvdp_handoff_range {
    uint64_t iova;   /* bus address the device uses */
    uint64_t size;
    uint64_t offset; /* offset in the memory fd */
};

struct pvdp_handoff_group {
    int group;       /* IOMMU group number (/dev/vfio/N) */
    int fd;          /* the open group fd, already in the container */
    int nfunctions;
    char functions[PVDP_HANDOFF_MAX_FUNCTIONS][32]; /* PCI addresses, for VFIO_GROUP_GET_DEVICE_FD */
};

struct pvdp_handoff {
    int protocol;
    char resource[256];
    char iommu_type[32];       /* "spapr-tce-v2" or "spapr-tce" */
    int iommu_value;           /* VFIO_SET_IOMMU value: 7 (v2) or 2 (v1) */
    uint64_t window_start;
    uint64_t window_size;
    int iommu_page_shift;
    uint64_t iommu_page_size;
    int window_created;
    uint64_t memory_size;
    uint64_t memory_page_size;
    int hugetlb;
    int container_fd;
    int memory_fd;
    int ngroups;
    struct pvdp_handoff_group groups[PVDP_HANDOFF_MAX_GROUPS];
    int nranges;
    struct pvdp_handoff_range ranges[PVDP_HANDOFF_MAX_RANGES];
    char *description_json;    /* the description as received (malloc'd; freed by pvdp_handoff_close) */
};

/*
 * Connects to socket_path, claims, receives the fds and the description.
 * Returns 0 and fills *out, or -1 with "CODE: message" in err (the plugin's
 * error code, such as PVDP_HANDOFF_ALREADY_CLAIMED, or a local one); on failure
 * no fd is left open. A PVDP_HANDOFF_BUSY answer (a crowd at the socket) is
 * retried with jittered backoff; timeout_ms bounds the whole claim, retries
 * included, and a claim still refused (or whose last retry the deadline cut
 * short) ends with PVDP_HANDOFF_BUSY; with PVDP_HANDOFF_DEBUG set in the
 * environment each wait is noted on stderr.
 */
int pvdp_handoff_claim(const char *socket_path, int timeout_ms, struct pvdp_handoff *out, char *err, size_t errlen);

/* Closes every fd of a claim and frees the JSON. */
void pvdp_handoff_close(struct pvdp_handoff *h);

#ifdef __cplusplus
}
#endif

#endif
