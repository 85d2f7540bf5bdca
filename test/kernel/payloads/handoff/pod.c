/*
 * The "pod" of the handoff suite, in C: a separate process that receives the VFIO container the
 * plugin prepared and drives QEMU's edu device through the pre-mapped window.
 *
 *   pod claim SOCKET BDF TAG   claims with clients/c/pvdp_handoff.c (linked in)
 *   pod fds BDF TAG            takes the fds from `power-vfio-handoff exec` (3 container, 4 memory,
 *                              5 group; PVDP_DMA_IOVA, PVDP_DMA_MEMORY_SIZE, PVDP_DMA_WINDOW_* in env)
 *
 * Steps, one `HANDOFF PASS|FAIL TAG: name: detail` line each:
 *   no VFIO/memfd fd before the claim (a fresh process), the claim and its description, mmap of the
 *   memory fd, VFIO_GROUP_GET_DEVICE_FD on the received group fd, memory space + bus master on, the
 *   edu DMA RAM -> device -> RAM through the pre-mapped iova, MAP_DMA and UNMAP_DMA refused with
 *   EPERM (the container's mm is the plugin's). Then it prints `HANDOFF HOLDING`, waits for a line on
 *   stdin (the plugin measures while the pod holds everything) and exits without closing anything:
 *   the kernel releases it all.
 *
 * edu (QEMU hw/misc/edu.c): 0x00 ident 0x010000ed, 0x80 DMA src, 0x88 dst, 0x90 count, 0x98 cmd
 * (bit 0 run, bit 1 device -> RAM); buffer at 0x40000; 28-bit DMA mask; MMIO native-endian (big
 * on ppc64: the order comes from the ident register).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/vfio.h>

#include "pvdp_handoff.h"

#define EDU_IDENT 0x00
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_BUFFER 0x40000u
#define EDU_DMA_LIMIT (1ull << 28)
#define LEN 2048

static const char *tag = "c";
static int passed, failed;

static void report(int ok, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(int ok, const char *name, const char *fmt, ...) {
    char detail[512] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    if (ok) passed++;
    else failed++;
    printf("HANDOFF %s %s: %s%s%s\n", ok ? "PASS" : "FAIL", tag, name, detail[0] ? ": " : "", detail);
    fflush(stdout);
}

struct dev {
    int fd;
    uint64_t cfg_off, bar0_off, bar0_size;
    int big;
};

static int region(int fd, unsigned index, uint64_t *offset, uint64_t *size) {
    struct vfio_region_info ri = {.argsz = sizeof ri, .index = index};
    if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0) return -1;
    *offset = ri.offset;
    if (size) *size = ri.size;
    return 0;
}

static int cfg16(struct dev *d, unsigned off, uint16_t *v) {
    uint8_t b[2];
    if (pread(d->fd, b, 2, d->cfg_off + off) != 2) return -1;
    *v = (uint16_t)(b[0] | b[1] << 8); /* config space is little-endian */
    return 0;
}

static int cfg16w(struct dev *d, unsigned off, uint16_t v) {
    uint8_t b[2] = {v & 0xff, v >> 8};
    return pwrite(d->fd, b, 2, d->cfg_off + off) == 2 ? 0 : -1;
}

static int rd32(struct dev *d, unsigned off, uint32_t *v) {
    uint8_t b[4];
    if (pread(d->fd, b, 4, d->bar0_off + off) != 4) return -1;
    *v = d->big ? (uint32_t)b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3] : (uint32_t)b[3] << 24 | b[2] << 16 | b[1] << 8 | b[0];
    return 0;
}

static int wr32(struct dev *d, unsigned off, uint32_t v) {
    uint8_t b[4];
    if (d->big) { b[0] = v >> 24; b[1] = v >> 16; b[2] = v >> 8; b[3] = v; }
    else { b[3] = v >> 24; b[2] = v >> 16; b[1] = v >> 8; b[0] = v; }
    return pwrite(d->fd, b, 4, d->bar0_off + off) == 4 ? 0 : -1;
}

static int edu_dma(struct dev *d, uint32_t src, uint32_t dst, uint32_t count, int to_ram) {
    if (wr32(d, EDU_DMA_SRC, src) || wr32(d, EDU_DMA_DST, dst) || wr32(d, EDU_DMA_CNT, count) || wr32(d, EDU_DMA_CMD, 1u | (to_ram ? 2u : 0u)))
        return -1;
    for (int i = 0; i < 500; i++) { /* 10 s */
        uint32_t cmd;
        if (rd32(d, EDU_DMA_CMD, &cmd)) return -1;
        if (!(cmd & 1)) return 0;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    errno = ETIMEDOUT;
    return -1;
}

/* How many open fds point at /dev/vfio/ or a memfd. */
static int vfio_fds(char *list, size_t len) {
    DIR *dir = opendir("/proc/self/fd");
    int n = 0;
    list[0] = 0;
    if (!dir) return -1;
    struct dirent *e;
    while ((e = readdir(dir))) {
        char path[300], target[256];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t t = readlink(path, target, sizeof target - 1);
        if (t < 0) continue;
        target[t] = 0;
        if (!strncmp(target, "/dev/vfio", 9) || !strncmp(target, "/memfd:", 7) || !strncmp(target, "anon_inode:[vfio", 16)) {
            n++;
            size_t l = strlen(list);
            snprintf(list + l, len - l, "%s%s=%s", l ? "," : "", e->d_name, target);
        }
    }
    closedir(dir);
    return n;
}

static long long vmlck_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmLck:", 6)) kb = atoll(line + 6);
    fclose(f);
    return kb;
}

int main(int argc, char **argv) {
    int from_exec;
    const char *bdf;
    const char *socket_path = NULL;
    if (argc == 5 && !strcmp(argv[1], "claim")) {
        from_exec = 0;
        socket_path = argv[2];
        bdf = argv[3];
        tag = argv[4];
    } else if (argc == 4 && !strcmp(argv[1], "fds")) {
        from_exec = 1;
        bdf = argv[2];
        tag = argv[3];
    } else {
        fprintf(stderr, "usage: pod claim SOCKET BDF TAG | pod fds BDF TAG\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    int container_fd, memory_fd, group_fd;
    uint64_t iova, size, window_start, window_size;
    char list[1024];
    struct pvdp_handoff h;
    memset(&h, 0, sizeof h);
    if (!from_exec) {
        int n = vfio_fds(list, sizeof list);
        report(n == 0, "the pod is a separate process (no VFIO or memfd fd before the claim)", "%d such fds%s%s, pid %d", n, n ? ": " : "", list,
               (int)getpid());
        char err[512];
        if (pvdp_handoff_claim(socket_path, 10000, &h, err, sizeof err) != 0) {
            report(0, "pvdp_handoff_claim (C client) receives the fds and the description", "%s", err);
            return 1;
        }
        int ok = h.protocol == 1 && h.ngroups == 1 && h.nranges == 1 && h.container_fd >= 0 && h.memory_fd >= 0 && h.groups[0].fd >= 0 &&
                 h.groups[0].nfunctions >= 1 && !strcmp(h.groups[0].functions[0], bdf);
        report(ok, "pvdp_handoff_claim (C client) receives the fds and the description",
               "%s, window 0x%llx+0x%llx pageShift %d, range iova 0x%llx size 0x%llx offset 0x%llx, fds container %d memory %d group %d:%d (%s)",
               h.iommu_type, (unsigned long long)h.window_start, (unsigned long long)h.window_size, h.iommu_page_shift,
               (unsigned long long)h.ranges[0].iova, (unsigned long long)h.ranges[0].size, (unsigned long long)h.ranges[0].offset,
               h.container_fd, h.memory_fd, h.groups[0].group, h.groups[0].fd, h.groups[0].nfunctions ? h.groups[0].functions[0] : "-");
        if (!ok) return 1;
        container_fd = h.container_fd;
        memory_fd = h.memory_fd;
        group_fd = h.groups[0].fd;
        iova = h.ranges[0].iova;
        size = h.ranges[0].size;
        window_start = h.window_start;
        window_size = h.window_size;
    } else {
        const char *e_iova = getenv("PVDP_DMA_IOVA"), *e_size = getenv("PVDP_DMA_MEMORY_SIZE");
        const char *e_ws = getenv("PVDP_DMA_WINDOW_START"), *e_wz = getenv("PVDP_DMA_WINDOW_SIZE"), *e_g = getenv("PVDP_VFIO_GROUP_FDS");
        container_fd = atoi(getenv("PVDP_VFIO_CONTAINER_FD") ? getenv("PVDP_VFIO_CONTAINER_FD") : "-1");
        memory_fd = atoi(getenv("PVDP_HANDOFF_MEMORY_FD") ? getenv("PVDP_HANDOFF_MEMORY_FD") : "-1");
        group_fd = e_g ? atoi(e_g) : -1;
        iova = e_iova ? strtoull(e_iova, NULL, 0) : 0;
        size = e_size ? strtoull(e_size, NULL, 0) : 0;
        window_start = e_ws ? strtoull(e_ws, NULL, 0) : 0;
        window_size = e_wz ? strtoull(e_wz, NULL, 0) : 0;
        int n = vfio_fds(list, sizeof list);
        int ok = e_iova && e_size && container_fd == 3 && memory_fd == 4 && group_fd == 5 && n == 3;
        report(ok, "power-vfio-handoff exec hands the fds at 3, 4, 5 with the description in the environment",
               "container %d memory %d groups %s, iova %s size %s window %s+%s %s; open: %s", container_fd, memory_fd, e_g ? e_g : "-",
               e_iova ? e_iova : "-", e_size ? e_size : "-", e_ws ? e_ws : "-", e_wz ? e_wz : "-", getenv("PVDP_IOMMU_TYPE") ? getenv("PVDP_IOMMU_TYPE") : "-", list);
        if (!ok) return 1;
    }

    report(iova + size <= EDU_DMA_LIMIT && iova >= window_start && iova + size <= window_start + window_size,
           "the pre-mapped range is inside the window and below the edu's 28-bit DMA mask", "iova 0x%llx+0x%llx, window 0x%llx+0x%llx",
           (unsigned long long)iova, (unsigned long long)size, (unsigned long long)window_start, (unsigned long long)window_size);

    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memory_fd, 0);
    if (mem == MAP_FAILED) {
        report(0, "mmap of the memory fd (MAP_SHARED)", "%s", strerror(errno));
        return 1;
    }
    report(1, "mmap of the memory fd (MAP_SHARED)", "%llu bytes", (unsigned long long)size);

    struct dev d = {.big = 1};
    d.fd = ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (d.fd < 0) {
        report(0, "VFIO_GROUP_GET_DEVICE_FD on the received group fd", "%s: %s", bdf, strerror(errno));
        return 1;
    }
    if (region(d.fd, VFIO_PCI_CONFIG_REGION_INDEX, &d.cfg_off, NULL) || region(d.fd, VFIO_PCI_BAR0_REGION_INDEX, &d.bar0_off, &d.bar0_size)) {
        report(0, "VFIO_GROUP_GET_DEVICE_FD on the received group fd", "region info: %s", strerror(errno));
        return 1;
    }
    uint16_t vendor = 0, device = 0, before = 0, after = 0;
    cfg16(&d, 0, &vendor);
    cfg16(&d, 2, &device);
    cfg16(&d, 4, &before);
    cfg16w(&d, 4, before | 0x2 | 0x4); /* memory space, bus master */
    cfg16(&d, 4, &after);
    uint8_t raw[4] = {0};
    int ident_ok = pread(d.fd, raw, 4, d.bar0_off + EDU_IDENT) == 4;
    uint32_t be = (uint32_t)raw[0] << 24 | raw[1] << 16 | raw[2] << 8 | raw[3];
    uint32_t le = (uint32_t)raw[3] << 24 | raw[2] << 16 | raw[1] << 8 | raw[0];
    if (be == 0x010000ed) d.big = 1;
    else if (le == 0x010000ed) d.big = 0;
    else ident_ok = 0;
    report(vendor == 0x1234 && device == 0x11e8 && (after & 6) == 6 && ident_ok,
           "VFIO_GROUP_GET_DEVICE_FD on the received group fd, bus mastering on, edu ident through BAR0",
           "device fd %d, %04x:%04x, command 0x%x -> 0x%x, BAR0 0x%llx bytes, MMIO %s-endian", d.fd, vendor, device, before, after,
           (unsigned long long)d.bar0_size, d.big ? "big" : "little");

    /* RAM -> device -> RAM through the pre-mapped iova. */
    unsigned char pattern[LEN];
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int i = 0; i < LEN; i++) pattern[i] = (unsigned char)rand();
    const uint64_t src_off = 0x1000, dst_off = size > 0x10000 ? 0x80000 % size : 0x6000;
    memcpy(mem + src_off, pattern, LEN);
    memset(mem + dst_off, 0xee, LEN);
    int r1 = edu_dma(&d, (uint32_t)(iova + src_off), EDU_BUFFER, LEN, 0);
    int e1 = errno;
    int r2 = r1 ? -1 : edu_dma(&d, EDU_BUFFER, (uint32_t)(iova + dst_off), LEN, 1);
    int e2 = errno;
    int same = !memcmp(mem + dst_off, pattern, LEN);
    if (r1 || r2)
        report(0, "edu DMA RAM -> device -> RAM through the pre-mapped iova", "%s", strerror(r1 ? e1 : e2));
    else
        report(same, "edu DMA RAM -> device -> RAM through the pre-mapped iova", "%d bytes from iova 0x%llx back to iova 0x%llx%s", LEN,
               (unsigned long long)(iova + src_off), (unsigned long long)(iova + dst_off), same ? ", data checked" : ", DATA DIFFERS");

    /* The container's mm is the plugin's: MAP_DMA / UNMAP_DMA from here are EPERM. */
    struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                           .vaddr = (uint64_t)(uintptr_t)mem, .iova = iova, .size = 1ull << 16 < size ? 1ull << 16 : size};
    int m = ioctl(container_fd, VFIO_IOMMU_MAP_DMA, &map);
    int me = errno;
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof unmap, .iova = iova, .size = size};
    int u = ioctl(container_fd, VFIO_IOMMU_UNMAP_DMA, &unmap);
    int ue = errno;
    report(m < 0 && me == EPERM && u < 0 && ue == EPERM, "MAP_DMA and UNMAP_DMA from the pod are refused with EPERM (the container's mm is the plugin's)",
           "MAP_DMA %s, UNMAP_DMA %s", m < 0 ? strerrorname_np(me) : "succeeded", u < 0 ? strerrorname_np(ue) : "succeeded");

    /* Still works after the refused calls (nothing was unmapped). */
    memset(mem + dst_off, 0x11, LEN);
    int r3 = edu_dma(&d, EDU_BUFFER, (uint32_t)(iova + dst_off), LEN, 1);
    report(r3 == 0 && !memcmp(mem + dst_off, pattern, LEN), "the mapping is intact after the refused UNMAP_DMA (device -> RAM again)", NULL);

    long long kb = vmlck_kb();
    report(kb == 0, "the pod's own VmLck is 0 (the pinned pages are charged to the plugin)", "VmLck %lld kB", kb);

    printf("HANDOFF SUMMARY %s passed=%d failed=%d\n", tag, passed, failed);
    printf("HANDOFF HOLDING %s\n", tag);
    fflush(stdout);
    char buf[16];
    if (read(0, buf, sizeof buf) < 0) {} /* the plugin measures, then lets us go */
    /* Exit without closing anything: the kernel releases the device, the container and the pinning. */
    return failed ? 1 : 0;
}
