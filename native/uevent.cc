// Kernel uevent listener: a NETLINK_KOBJECT_UEVENT socket bound to the
// kernel's multicast group, read by one dedicated thread (never the libuv
// pool, which discovery keeps busy) and handed to JavaScript datagram by
// datagram through a thread-safe function. The thread blocks only in poll(2)
// on the socket and an eventfd that close() writes, and never waits for
// JavaScript: when the queue to the main thread is full it drops the datagram
// and reports the loss, exactly as the kernel reports ENOBUFS when the socket
// buffer overflows. Either loss tells the caller to rescan everything.
//
// JS surface (see src/topology/uevents.ts):
//   openUeventMonitor(onMessage(buf), onError?(err)) -> { close(), ref(), unref() }
// Errors are shaped like Node's system errors: errno (positive), code, syscall.
#include <napi.h>

#include <errno.h>
#include <linux/netlink.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace {

// The kernel's uevent multicast group (udevd re-broadcasts on group 2).
constexpr uint32_t kKernelGroup = 1;
// A kernel uevent is at most a path plus UEVENT_BUFFER_SIZE (2 KiB) of
// environment; 64 KiB leaves room for whatever a future kernel sends.
constexpr size_t kRecvBuffer = 64 * 1024;
// Datagrams queued for the main thread before the listener starts dropping.
constexpr size_t kMaxQueue = 4096;
// Socket receive buffer: large, so a burst (thousands of VFs appearing) fits.
constexpr int kSocketBuffer = 8 * 1024 * 1024;

const char* ErrnoName(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (const char* n = strerrorname_np(err)) return n;
#endif
  switch (err) {
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ENOBUFS: return "ENOBUFS";
    case EMSGSIZE: return "EMSGSIZE";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOMEM: return "ENOMEM";
    case EINVAL: return "EINVAL";
    default: return "EUNKNOWN";
  }
}

// "CODE: message, syscall", with errno/code/syscall properties, as Node's own.
Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& detail = "") {
  std::string msg = std::string(ErrnoName(err)) + ": " + strerror(err) + ", " + syscall;
  if (!detail.empty()) msg += " (" + detail + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

Napi::Error CodedError(Napi::Env env, const char* code, const std::string& msg, bool typeError) {
  Napi::Error e = typeError ? static_cast<Napi::Error>(Napi::TypeError::New(env, msg)) : Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// One item for the main thread: a datagram, or a loss/failure report.
struct Item {
  std::vector<char> data;
  int err = 0;               // non-zero: an error report instead of a datagram
  const char* syscall = "";  // for the error report
  const char* detail = "";   // extra words for the message
  bool fatal = false;        // the listener thread has stopped
  uint64_t dropped = 0;      // datagrams lost before this report, when known
};

struct Monitor;
void CallJs(Napi::Env env, Napi::Function onMessage, Monitor* m, Item* item);
using Tsfn = Napi::TypedThreadSafeFunction<Monitor, Item, CallJs>;

struct Monitor {
  int sock = -1;
  int stopFd = -1;
  std::thread thread;
  Tsfn tsfn;
  Napi::FunctionReference onError;  // main thread only
  std::atomic<bool> closed{false};  // set by close(): nothing more reaches JS
  bool released = false;            // main thread only: the TSFN was released
  // Datagrams the listener dropped because the queue was full, not yet reported.
  std::atomic<uint64_t> queueDrops{0};

  ~Monitor() { CloseFds(); }

  // Only once the thread has stopped (or never started).
  void CloseFds() {
    if (sock >= 0) ::close(sock);
    if (stopFd >= 0) ::close(stopFd);
    sock = -1;
    stopFd = -1;
  }

  // Wake the thread and wait for it. Safe to call more than once.
  void StopThread() {
    if (!thread.joinable()) return;
    uint64_t one = 1;
    ssize_t w;
    do {
      w = ::write(stopFd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
    thread.join();
  }

  // Hand one item to the main thread without ever blocking on it. False when
  // the queue was full (the item is dropped and counted).
  bool Post(Item* item) {
    napi_status s = tsfn.NonBlockingCall(item);
    if (s == napi_ok) return true;
    delete item;
    if (s == napi_queue_full) queueDrops.fetch_add(1, std::memory_order_relaxed);
    return false;
  }

  Item* MakeError(int err, const char* syscall, const char* detail, bool fatal, uint64_t dropped) {
    auto* item = new Item();
    item->err = err;
    item->syscall = syscall;
    item->detail = detail;
    item->fatal = fatal;
    item->dropped = dropped;
    return item;
  }

  void PostError(int err, const char* syscall, const char* detail, bool fatal, uint64_t dropped = 0) {
    Post(MakeError(err, syscall, detail, fatal, dropped));
  }

  // True when close() asked the thread to stop within `ms` milliseconds.
  bool StopRequested(int ms) {
    struct pollfd pfd = {stopFd, POLLIN, 0};
    int n;
    do {
      n = ::poll(&pfd, 1, ms);
    } while (n < 0 && errno == EINTR);
    return n > 0;
  }

  // A fatal error must reach JavaScript even when the queue is full, or the
  // listener would look alive forever: retry until it is taken or close() comes.
  void PostFatal(int err, const char* syscall) {
    for (;;) {
      Item* item = MakeError(err, syscall, "", true, 0);
      if (tsfn.NonBlockingCall(item) == napi_ok) return;
      delete item;
      if (StopRequested(10)) return;
    }
  }

  void Run() {
    std::vector<char> buf(kRecvBuffer);
    for (;;) {
      // Report queue drops as soon as there is room again: the caller must
      // rescan. While the report itself does not fit, keep the count and
      // wake up soon to try again rather than wait for the next uevent.
      int timeoutMs = -1;
      uint64_t dropped = queueDrops.exchange(0, std::memory_order_relaxed);
      if (dropped != 0) {
        auto* report = MakeError(ENOBUFS, "uv_async_send", "the JavaScript queue was full; uevents were dropped", false, dropped);
        if (tsfn.NonBlockingCall(report) != napi_ok) {
          delete report;
          queueDrops.fetch_add(dropped, std::memory_order_relaxed);
          timeoutMs = 10;
        }
      }

      struct pollfd fds[2] = {{sock, POLLIN, 0}, {stopFd, POLLIN, 0}};
      int n = ::poll(fds, 2, timeoutMs);
      if (n < 0) {
        if (errno == EINTR) continue;
        PostFatal(errno, "poll");
        return;
      }
      if (fds[1].revents != 0) return;  // close() or teardown
      if (fds[0].revents == 0) continue;

      // Drain the socket: it is non-blocking, so EAGAIN ends the batch.
      for (;;) {
        struct sockaddr_nl from;
        memset(&from, 0, sizeof from);
        struct iovec iov = {buf.data(), buf.size()};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_name = &from;
        msg.msg_namelen = sizeof from;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        ssize_t len = ::recvmsg(sock, &msg, MSG_DONTWAIT);
        if (len < 0) {
          int err = errno;
          if (err == EINTR) continue;
          if (err == EAGAIN || err == EWOULDBLOCK) break;
          if (err == ENOBUFS) {
            // The kernel dropped uevents: not fatal, but the caller must rescan.
            PostError(ENOBUFS, "recvmsg", "the socket buffer overflowed; uevents were lost", false);
            continue;
          }
          PostFatal(err, "recvmsg");
          return;
        }
        if (msg.msg_flags & MSG_TRUNC) {
          PostError(EMSGSIZE, "recvmsg", "a uevent was larger than the receive buffer and was dropped", false);
          continue;
        }
        // Only the kernel (port 0) speaks on group 1; anything else is forged or misrouted.
        if (msg.msg_namelen != sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0) continue;
        if (len == 0) continue;
        auto* item = new Item();
        item->data.assign(buf.data(), buf.data() + len);
        Post(item);
      }
    }
  }
};

Napi::Value MakeErrorValue(Napi::Env env, const Item& item) {
  Napi::Error e = SystemError(env, item.err, item.syscall, item.detail);
  e.Set("fatal", Napi::Boolean::New(env, item.fatal));
  if (item.dropped != 0) e.Set("dropped", Napi::Number::New(env, static_cast<double>(item.dropped)));
  return e.Value();
}

// Runs on the main thread. env is null when the TSFN is torn down with items
// still queued: then only free them.
void CallJs(Napi::Env env, Napi::Function onMessage, Monitor* m, Item* item) {
  std::unique_ptr<Item> owned(item);
  if (env == nullptr || m == nullptr || item == nullptr) return;
  if (m->closed.load()) return;
  // A throwing callback is the caller's bug: surface it as 'uncaughtException',
  // like a throwing listener of any Node event source (and without Node 20's
  // legacy N-API policy swallowing it into a deprecation warning).
  try {
    if (item->err != 0) {
      if (!m->onError.IsEmpty()) m->onError.Call(env.Undefined(), {MakeErrorValue(env, *item)});
      return;
    }
    Napi::Buffer<char> data = Napi::Buffer<char>::Copy(env, item->data.data(), item->data.size());
    onMessage.Call(env.Undefined(), {data});
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

// The only strong reference the native side keeps; the TSFN's finalizer owns
// it. At environment teardown (worker exit, process.exit) close() never ran:
// the finalizer stops the thread here, before the TSFN's memory goes away.
struct Holder {
  std::shared_ptr<Monitor> monitor;
};

void FinalizeHolder(Napi::Env, Holder* holder, Monitor*) {
  if (holder == nullptr) return;
  holder->monitor->closed.store(true);
  holder->monitor->StopThread();
  holder->monitor->onError.Reset();
  delete holder;
}

int OpenSocket(int* errOut, const char** syscallOut) {
  int fd = ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
  if (fd < 0) {
    *errOut = errno;
    *syscallOut = "socket";
    return -1;
  }
  // SO_RCVBUFFORCE needs CAP_NET_ADMIN; without it the kernel caps SO_RCVBUF
  // at rmem_max. Neither failing is fatal: the default buffer still works.
  int size = kSocketBuffer;
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0) {
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  struct sockaddr_nl addr;
  memset(&addr, 0, sizeof addr);
  addr.nl_family = AF_NETLINK;
  addr.nl_pid = 0;  // let the kernel pick a unique port
  addr.nl_groups = kKernelGroup;
  if (::bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0) {
    *errOut = errno;
    *syscallOut = "bind";
    ::close(fd);
    return -1;
  }
  return fd;
}

Napi::Value OpenUeventMonitor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) {
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"onMessage\" argument must be of type function", true);
  }
  if (info.Length() >= 2 && !info[1].IsUndefined() && !info[1].IsNull() && !info[1].IsFunction()) {
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"onError\" argument must be of type function", true);
  }

  auto monitor = std::make_shared<Monitor>();
  int err = 0;
  const char* syscall = "";
  monitor->sock = OpenSocket(&err, &syscall);
  if (monitor->sock < 0) throw SystemError(env, err, syscall);
  monitor->stopFd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (monitor->stopFd < 0) throw SystemError(env, errno, "eventfd");
  if (info.Length() >= 2 && info[1].IsFunction()) monitor->onError = Napi::Persistent(info[1].As<Napi::Function>());

  // One thread count, held by the main thread (released in close()); the
  // listener thread's lifetime is bounded by StopThread() instead.
  auto* holder = new Holder{monitor};
  try {
    monitor->tsfn = Tsfn::New(env, info[0].As<Napi::Function>(), "pvdp:uevent", kMaxQueue, 1, monitor.get(),
                              FinalizeHolder, holder);
  } catch (...) {
    delete holder;
    throw;
  }
  try {
    monitor->thread = std::thread([m = monitor.get()] { m->Run(); });
  } catch (const std::system_error& e) {
    monitor->closed.store(true);
    monitor->tsfn.Release();  // the finalizer deletes the holder
    throw SystemError(env, e.code().value() != 0 ? e.code().value() : EAGAIN, "pthread_create");
  }

  Napi::Object handle = Napi::Object::New(env);
  std::weak_ptr<Monitor> weak = monitor;
  handle.Set("close", Napi::Function::New(env, [weak](const Napi::CallbackInfo& ci) -> Napi::Value {
    Napi::Env e = ci.Env();
    std::shared_ptr<Monitor> m = weak.lock();
    if (!m || m->closed.exchange(true)) {
      throw CodedError(e, "ERR_UEVENT_MONITOR_CLOSED", "The uevent monitor is already closed", false);
    }
    m->StopThread();
    // The thread is gone: release the socket now, not when the finalizer runs.
    m->CloseFds();
    if (!m->released) {
      m->released = true;
      m->tsfn.Release();  // queued datagrams are dropped by CallJs; the finalizer frees the rest
    }
    return e.Undefined();
  }, "close"));
  handle.Set("ref", Napi::Function::New(env, [weak](const Napi::CallbackInfo& ci) -> Napi::Value {
    std::shared_ptr<Monitor> m = weak.lock();
    if (m && !m->closed.load()) m->tsfn.Ref(ci.Env());
    return ci.Env().Undefined();
  }, "ref"));
  handle.Set("unref", Napi::Function::New(env, [weak](const Napi::CallbackInfo& ci) -> Napi::Value {
    std::shared_ptr<Monitor> m = weak.lock();
    if (m && !m->closed.load()) m->tsfn.Unref(ci.Env());
    return ci.Env().Undefined();
  }, "unref"));
  return handle;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("openUeventMonitor", Napi::Function::New(env, OpenUeventMonitor, "openUeventMonitor"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vfio_uevent, Init)
