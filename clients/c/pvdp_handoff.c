/* The handoff client in C (see pvdp_handoff.h and docs/handoff-protocol.md). */
#define _GNU_SOURCE
#include "pvdp_handoff.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_RESPONSE (1u << 20)
#define MAX_FDS 253
#define MAX_DEPTH 32

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- a tiny JSON reader: enough for our own description, bounded and defensive ---- */

/* Every reader below takes NULL (a missing value) and answers NULL or -1. */
static const char *ws(const char *p) {
    if (!p) return NULL;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

/* Returns the first character after the string starting at p ('"'), or NULL. */
static const char *skip_string(const char *p) {
    if (!p || *p != '"') return NULL;
    for (p++; *p; p++) {
        if (*p == '\\') {
            if (!p[1]) return NULL;
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

static const char *skip_value(const char *p, int depth) {
    if (!p) return NULL;
    p = ws(p);
    if (depth > MAX_DEPTH) return NULL;
    if (*p == '"') return skip_string(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                p = skip_string(ws(p));
                if (!p) return NULL;
                p = ws(p);
                if (*p != ':') return NULL;
                p++;
            }
            p = skip_value(p, depth + 1);
            if (!p) return NULL;
            p = ws(p);
            if (*p == ',') { p++; continue; }
            if (*p == close) return p + 1;
            return NULL;
        }
    }
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        while (*p == '-' || *p == '+' || *p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9')) p++;
        return p;
    }
    if (!strncmp(p, "true", 4)) return p + 4;
    if (!strncmp(p, "false", 5)) return p + 5;
    if (!strncmp(p, "null", 4)) return p + 4;
    return NULL;
}

/* Copies the string at p into buf (NUL-terminated); 0 on success. \u escapes become '?'. */
static int get_string(const char *p, char *buf, size_t len) {
    size_t n = 0;
    if (!p || !buf) return -1;
    p = ws(p);
    if (*p != '"' || len == 0) return -1;
    for (p++; *p && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            p++;
            switch (*p) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': c = '?'; if (strlen(p) < 5) return -1; p += 4; break;
            case '"': case '\\': case '/': c = *p; break;
            default: return -1;
            }
        }
        if (n + 1 >= len) return -1;
        buf[n++] = c;
    }
    if (*p != '"') return -1;
    buf[n] = 0;
    return 0;
}

/* The value of key in the object at p, or NULL. */
static const char *obj_get(const char *p, const char *key) {
    char name[64];
    if (!p || !key) return NULL;
    p = ws(p);
    if (*p != '{') return NULL;
    p = ws(p + 1);
    if (*p == '}') return NULL;
    for (;;) {
        const char *k = ws(p);
        const char *after = skip_string(k);
        if (!after) return NULL;
        int match = get_string(k, name, sizeof name) == 0 && strcmp(name, key) == 0;
        p = ws(after);
        if (*p != ':') return NULL;
        p = ws(p + 1);
        if (match) return p;
        p = skip_value(p, 1);
        if (!p) return NULL;
        p = ws(p);
        if (*p != ',') return NULL;
        p++;
    }
}

/* Element i of the array at p, or NULL. */
static const char *arr_at(const char *p, int i) {
    if (!p) return NULL;
    p = ws(p);
    if (*p != '[') return NULL;
    p = ws(p + 1);
    if (*p == ']') return NULL;
    for (int n = 0;; n++) {
        p = ws(p);
        if (n == i) return p;
        p = skip_value(p, 1);
        if (!p) return NULL;
        p = ws(p);
        if (*p != ',') return NULL;
        p++;
    }
}

/* Elements of the array at p, counted up to max + 1 (each step rescans: keep it short). */
static int arr_len(const char *p, int max) {
    int n = 0;
    if (!p || *ws(p) != '[') return -1;
    while (n <= max && arr_at(p, n)) n++;
    return n;
}

static int get_int(const char *p, int *out) {
    char *end;
    long v;
    if (!p) return -1;
    p = ws(p);
    errno = 0;
    v = strtol(p, &end, 10);
    if (end == p || errno || v < -2147483647L || v > 2147483647L) return -1;
    *out = (int)v;
    return 0;
}

/* "0x" and 1 to 16 hex digits, nothing else (no sign, no spaces, no second prefix). */
static int get_hex(const char *p, uint64_t *out) {
    char buf[24];
    uint64_t v = 0;
    size_t n;
    if (!p || get_string(p, buf, sizeof buf) || buf[0] != '0' || buf[1] != 'x') return -1;
    n = strlen(buf + 2);
    if (n < 1 || n > 16) return -1;
    for (const char *c = buf + 2; *c; c++) {
        int d;
        if (*c >= '0' && *c <= '9') d = *c - '0';
        else if (*c >= 'a' && *c <= 'f') d = *c - 'a' + 10;
        else if (*c >= 'A' && *c <= 'F') d = *c - 'A' + 10;
        else return -1;
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static int get_bool(const char *p, int *out) {
    if (!p) return -1;
    p = ws(p);
    if (!strncmp(p, "true", 4)) { *out = 1; return 0; }
    if (!strncmp(p, "false", 5)) { *out = 0; return 0; }
    return -1;
}

/* ---- the claim ---- */

static void close_all(int *fds, int n) {
    for (int i = 0; i < n; i++) if (fds[i] >= 0) close(fds[i]);
}

static int parse_description(const char *d, struct pvdp_handoff *h, int nfds, char *err, size_t errlen) {
    const char *v;
    const char *window = obj_get(d, "window"), *memory = obj_get(d, "memory"), *iommu = obj_get(d, "iommu");
    const char *groups = obj_get(d, "groups"), *ranges = obj_get(d, "ranges");
    if (get_int(obj_get(d, "protocol"), &h->protocol) || h->protocol != PVDP_HANDOFF_PROTOCOL)
        return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: the description's protocol is not %d", PVDP_HANDOFF_PROTOCOL);
    if (!window || !memory || !iommu || !groups || !ranges)
        return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: the description lacks window, memory, iommu, groups or ranges");
    if ((v = obj_get(d, "resource")) && get_string(v, h->resource, sizeof h->resource)) h->resource[0] = 0;
    if (get_string(obj_get(iommu, "type"), h->iommu_type, sizeof h->iommu_type) || get_int(obj_get(iommu, "value"), &h->iommu_value) ||
        get_hex(obj_get(window, "start"), &h->window_start) || get_hex(obj_get(window, "size"), &h->window_size) ||
        get_int(obj_get(window, "pageShift"), &h->iommu_page_shift) || get_hex(obj_get(window, "pageSize"), &h->iommu_page_size) ||
        get_bool(obj_get(window, "created"), &h->window_created) || get_hex(obj_get(memory, "size"), &h->memory_size) ||
        get_hex(obj_get(memory, "pageSize"), &h->memory_page_size) || get_bool(obj_get(memory, "hugetlb"), &h->hugetlb))
        return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: a field of iommu, window or memory is missing or mistyped");
    if (h->window_size == 0 || h->window_start > UINT64_MAX - h->window_size)
        return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: the window 0x%llx+0x%llx is empty or wraps past 2^64",
                    (unsigned long long)h->window_start, (unsigned long long)h->window_size);
    h->ngroups = arr_len(groups, PVDP_HANDOFF_MAX_GROUPS);
    h->nranges = arr_len(ranges, PVDP_HANDOFF_MAX_RANGES);
    if (h->ngroups < 1 || h->ngroups > PVDP_HANDOFF_MAX_GROUPS || h->nranges < 0 || h->nranges > PVDP_HANDOFF_MAX_RANGES)
        return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: %d groups and %d ranges are outside this client's limits", h->ngroups, h->nranges);
    if (nfds != 2 + h->ngroups)
        return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: %d fds arrived for %d groups", nfds, h->ngroups);
    for (int i = 0; i < h->ngroups; i++) {
        struct pvdp_handoff_group *g = &h->groups[i];
        const char *gv = arr_at(groups, i), *fns;
        int index;
        if (get_int(obj_get(gv, "group"), &g->group) || get_int(obj_get(gv, "fdIndex"), &index) || index != 2 + i || !(fns = obj_get(gv, "functions")))
            return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: groups[%d] is invalid", i);
        g->nfunctions = arr_len(fns, PVDP_HANDOFF_MAX_FUNCTIONS);
        if (g->nfunctions < 0 || g->nfunctions > PVDP_HANDOFF_MAX_FUNCTIONS)
            return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: groups[%d] has too many functions", i);
        for (int f = 0; f < g->nfunctions; f++)
            if (get_string(arr_at(fns, f), g->functions[f], sizeof g->functions[f]))
                return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: groups[%d].functions[%d] is invalid", i, f);
    }
    for (int i = 0; i < h->nranges; i++) {
        struct pvdp_handoff_range *r = &h->ranges[i];
        const char *rv = arr_at(ranges, i);
        if (get_hex(obj_get(rv, "iova"), &r->iova) || get_hex(obj_get(rv, "size"), &r->size) || get_hex(obj_get(rv, "offset"), &r->offset))
            return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: ranges[%d] is invalid", i);
        if (r->iova < h->window_start || r->size > h->window_size || r->iova - h->window_start > h->window_size - r->size ||
            r->offset > h->memory_size || r->size > h->memory_size - r->offset)
            return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: ranges[%d] lies outside the window or the memory", i);
    }
    return 0;
}

/*
 * Judges one response line (NUL-terminated, newline removed) that came with
 * nfds fds. Returns 0 with *out filled (the fds not yet stored), 1 when the
 * plugin answered PVDP_HANDOFF_BUSY, -1 on any other error; err says which.
 * Kept apart from the socket so it can be tested and fuzzed on bytes alone.
 */
static int parse_response(const char *line, int nfds, struct pvdp_handoff *out, char *err, size_t errlen) {
    char result[16], code[64], message[512];
    const char *v = obj_get(line, "result"), *end;
    if (!v || get_string(v, result, sizeof result)) return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: the answer has no result");
    if (!strcmp(result, "error")) {
        const char *e = obj_get(line, "error");
        if (get_string(obj_get(e, "code"), code, sizeof code)) strcpy(code, "PVDP_HANDOFF_INTERNAL");
        if (get_string(obj_get(e, "message"), message, sizeof message)) strcpy(message, "the plugin refused the claim");
        fail(err, errlen, "%s: %s", code, message);
        return strcmp(code, "PVDP_HANDOFF_BUSY") ? -1 : 1;
    }
    v = obj_get(line, "description");
    if (strcmp(result, "claimed") || !v) return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: unexpected result \"%s\"", result);
    if (parse_description(v, out, nfds, err, errlen)) return -1;
    end = skip_value(v, 0);
    if (!end) return fail(err, errlen, "PVDP_HANDOFF_MALFORMED: the description is not valid JSON");
    out->description_json = strndup(v, (size_t)(end - v));
    if (!out->description_json) return fail(err, errlen, "PVDP_HANDOFF_INTERNAL: out of memory");
    return 0;
}

static void reset(struct pvdp_handoff *h) {
    memset(h, 0, sizeof *h);
    h->container_fd = h->memory_fd = -1;
}

/* One connection: 0 claimed, 1 BUSY (retry), -1 failed; err says why. */
static int claim_once(const char *socket_path, int timeout_ms, struct pvdp_handoff *out, char *err, size_t errlen) {
    struct sockaddr_un addr;
    struct timeval tv;
    static const char request[] = "{\"protocol\":1,\"request\":\"claim\"}\n";
    int fds[MAX_FDS];
    int nfds = 0, s, rc = -1, send_errno = 0;
    size_t len = 0;
    char *buf = NULL, *nl = NULL;

    s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return fail(err, errlen, "PVDP_HANDOFF_CONNECT: socket: %s", strerror(errno));
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, socket_path);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int e = errno;
        close(s);
        /* A full accept queue: the plugin is flooded, which is BUSY by another name. */
        if (e == EAGAIN) {
            fail(err, errlen, "PVDP_HANDOFF_BUSY: %s accepts no more connections now (EAGAIN)", socket_path);
            return 1;
        }
        return fail(err, errlen, "%s: cannot connect to %s: %s%s", (e == ENOENT || e == ECONNREFUSED) ? "PVDP_HANDOFF_NO_SOCKET" : "PVDP_HANDOFF_CONNECT",
                    socket_path, strerror(e), e == ENOENT ? " (already claimed, not prepared, or the plugin restarted: restart the container)" : "");
    }
    if (send(s, request, sizeof request - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof request - 1)) {
        /* A plugin refusing a crowd answers BUSY and closes at once, maybe before the
         * request arrives: its answer is still waiting to be read. */
        send_errno = errno;
        if (send_errno != EPIPE && send_errno != ECONNRESET) {
            fail(err, errlen, "PVDP_HANDOFF_CONNECT: send: %s", strerror(send_errno));
            goto out;
        }
    }
    buf = malloc(MAX_RESPONSE + 1);
    if (!buf) { fail(err, errlen, "PVDP_HANDOFF_INTERNAL: out of memory"); goto out; }
    while (!nl) {
        union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * MAX_FDS)]; } control;
        struct iovec iov = { buf + len, MAX_RESPONSE - len };
        struct msghdr msg;
        ssize_t n;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof control.bytes;
        if (iov.iov_len == 0) { fail(err, errlen, "PVDP_HANDOFF_MALFORMED: the response is longer than 1 MiB"); goto out; }
        do n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE)) n = 0;
        if (n < 0) {
            fail(err, errlen, "%s: recvmsg: %s", errno == EAGAIN ? "PVDP_HANDOFF_TIMEOUT" : "PVDP_HANDOFF_CONNECT", strerror(errno));
            goto out;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
            int count = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                if (nfds < MAX_FDS) fds[nfds++] = fd; else close(fd);
            }
        }
        if (msg.msg_flags & MSG_CTRUNC) {
            fail(err, errlen, "PVDP_HANDOFF_FDS_TRUNCATED: the kernel cut off the passed fds (MSG_CTRUNC): this process is at its open-file limit "
                              "(RLIMIT_NOFILE, ulimit -n); raise it or close fds, then restart the container to prepare again");
            goto out;
        }
        if (n == 0) {
            fail(err, errlen, "PVDP_HANDOFF_CONNECTION_CLOSED: the plugin closed the connection without an answer%s%s",
                 send_errno ? " (the request could not be sent: " : "", send_errno ? strerror(send_errno) : "");
            if (send_errno && err && errlen > 1 && strlen(err) + 1 < errlen) strcat(err, ")");
            goto out;
        }
        len += (size_t)n;
        buf[len] = 0;
        nl = memchr(buf, '\n', len);
    }
    *nl = 0;
    rc = parse_response(buf, nfds, out, err, errlen);
    if (rc != 0) goto out;
    out->container_fd = fds[0];
    out->memory_fd = fds[1];
    for (int i = 0; i < out->ngroups; i++) out->groups[i].fd = fds[2 + i];
    nfds = 0; /* owned by *out now */
out:
    close_all(fds, nfds);
    if (rc != 0) {
        int keep_errno = errno;
        free(out->description_json);
        reset(out);
        errno = keep_errno;
    }
    free(buf);
    close(s);
    return rc;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* xorshift32: jitter needs spread, not secrecy, and must not disturb the caller's rand(). */
static unsigned jitter(void) {
    static unsigned state;
    if (!state) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        state = (unsigned)ts.tv_nsec ^ ((unsigned)getpid() << 16) ^ 0x9e3779b9u;
        if (!state) state = 1;
    }
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

/* Wait before retry `attempt` (from 0): doubling from 10 ms up to 1 s, the upper half jittered. */
static int busy_backoff_ms(int attempt) {
    int ceiling = PVDP_HANDOFF_BUSY_MAX_MS;
    if (attempt < 7) ceiling = PVDP_HANDOFF_BUSY_FIRST_MS << attempt;
    if (ceiling > PVDP_HANDOFF_BUSY_MAX_MS) ceiling = PVDP_HANDOFF_BUSY_MAX_MS;
    return ceiling / 2 + (int)(jitter() % (unsigned)(ceiling / 2 + 1));
}

static void sleep_ms(int ms) {
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

int pvdp_handoff_claim(const char *socket_path, int timeout_ms, struct pvdp_handoff *out, char *err, size_t errlen) {
    struct sockaddr_un addr;
    long long deadline;
    char busy[512] = ""; /* the last BUSY answer, for a retry the deadline cuts short */
    if (!out) return fail(err, errlen, "PVDP_HANDOFF_USAGE: out is NULL");
    reset(out);
    if (!socket_path || !*socket_path) return fail(err, errlen, "PVDP_HANDOFF_NO_SOCKET: no socket path (is PVDP_HANDOFF_SOCKET set?)");
    if (strlen(socket_path) >= sizeof addr.sun_path) return fail(err, errlen, "PVDP_HANDOFF_NO_SOCKET: socket path too long");
    if (timeout_ms <= 0) return fail(err, errlen, "PVDP_HANDOFF_USAGE: timeout_ms must be positive");
    deadline = now_ms() + timeout_ms;
    for (int attempt = 0;; attempt++) {
        long long left = deadline - now_ms();
        int rc, wait;
        rc = claim_once(socket_path, left > 0 ? (int)left : 1, out, err, errlen);
        if (rc < 0 && busy[0] && err && strncmp(err, "PVDP_HANDOFF_TIMEOUT:", 21) == 0) {
            /* The deadline cut a retry short: the crowd that answered BUSY is most likely still there. */
            snprintf(err, errlen, "%s (still busy after %d attempts within %d ms; one more had no answer by the deadline)", busy, attempt, timeout_ms);
            return -1;
        }
        if (rc <= 0) return rc;
        if (err && errlen > 0) snprintf(busy, sizeof busy, "%s", err);
        wait = busy_backoff_ms(attempt);
        if (now_ms() + wait >= deadline) {
            /* Still busy at the deadline: the plugin's BUSY line stays in err. */
            if (err && errlen > 0) {
                size_t used = strlen(err);
                snprintf(err + used, errlen - used, " (still busy after %d attempts within %d ms)", attempt + 1, timeout_ms);
            }
            return -1;
        }
        if (getenv("PVDP_HANDOFF_DEBUG")) fprintf(stderr, "pvdp_handoff: busy, retrying in %d ms (attempt %d)\n", wait, attempt + 1);
        sleep_ms(wait);
    }
}

void pvdp_handoff_close(struct pvdp_handoff *h) {
    if (!h) return;
    if (h->container_fd >= 0) close(h->container_fd);
    if (h->memory_fd >= 0) close(h->memory_fd);
    for (int i = 0; i < h->ngroups; i++) if (h->groups[i].fd >= 0) close(h->groups[i].fd);
    free(h->description_json);
    memset(h, 0, sizeof *h);
    h->container_fd = h->memory_fd = -1;
}
