// Thin Node-API addon for VFIO on POWER: /dev/vfio nodes, the sPAPR TCE
// ioctls, memfd DMA memory, RLIMIT_MEMLOCK and SCM_RIGHTS. Structs are packed
// here from <linux/vfio.h>, ioctl numbers and flags come from that header at
// compile time (they differ between x86 and powerpc) and are exported as
// `constants` / `ioctlNumbers`. Every call that can block runs on a libuv
// worker thread and returns a Promise. Failures reject with an Error carrying
// `errno` (positive, as the kernel gave it), `syscall` and, for ioctls,
// `ioctl`; a positive ioctl return rejects with `returnValue`. The TypeScript
// wrapper (src/vfio/native-binding.ts) turns these into VfioError.
#include <napi.h>
#include <cmath>

#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif

namespace {

// Retries a system call interrupted by a signal (not used for close(2):
// Linux releases the fd even when close is interrupted).
template <typename F>
auto RetryEintr(F fn) -> decltype(fn()) {
  decltype(fn()) r;
  do {
    r = fn();
  } while (r == -1 && errno == EINTR);
  return r;
}

// Mappings made through this addon. readMemory/writeMemory/munmap accept only
// these, so a wrong address from JavaScript is a RangeError, never a SIGSEGV.
struct AddonData {
  std::mutex mu;
  std::map<uintptr_t, size_t> maps;  // address -> length
};

struct Result {
  int err = 0;         // errno on failure
  long ret = 0;        // the syscall's return value
  bool positiveIsError = false;
  uint64_t u[4] = {0, 0, 0, 0};
  std::vector<char> data;
  std::vector<int> fds;
};

using Work = std::function<void(Result&)>;
using Done = std::function<Napi::Value(Napi::Env, Result&)>;

// The errno's symbolic name from the C library (glibc >= 2.32: strerrorname_np), or nullptr.
// libuv's table (what Node's util.getSystemErrorMap knows) lacks several Linux errnos the
// kernel's VFIO code returns, EBADFD first of all: the names come from here instead.
const char* ErrnoName(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  return strerrorname_np(err);
#else
  switch (err) {
#ifdef EBADFD
    case EBADFD: return "EBADFD";
#endif
#ifdef ENOTBLK
    case ENOTBLK: return "ENOTBLK";
#endif
#ifdef EREMOTEIO
    case EREMOTEIO: return "EREMOTEIO";
#endif
    default: return nullptr;
  }
#endif
}

Napi::Error MakeError(Napi::Env env, int err, const char* syscall, const std::string& ioctlName) {
  std::string msg = std::string(strerror(err)) + ", " + syscall;
  if (!ioctlName.empty()) msg += " " + ioctlName;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  if (const char* name = ErrnoName(err)) e.Set("code", Napi::String::New(env, name));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (!ioctlName.empty()) e.Set("ioctl", Napi::String::New(env, ioctlName));
  return e;
}

class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env, const char* syscall, std::string ioctlName, Work work, Done done)
      : Napi::AsyncWorker(env, "pvdp:vfio"),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(syscall),
        ioctl_(std::move(ioctlName)),
        work_(std::move(work)),
        done_(std::move(done)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { work_(res_); }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (res_.err != 0) {
      deferred_.Reject(MakeError(env, res_.err, syscall_, ioctl_).Value());
      return;
    }
    if (res_.positiveIsError && res_.ret > 0) {
      Napi::Error e = Napi::Error::New(env, "unexpected positive return, " + std::string(syscall_) + " " + ioctl_);
      e.Set("returnValue", Napi::Number::New(env, static_cast<double>(res_.ret)));
      e.Set("syscall", Napi::String::New(env, syscall_));
      if (!ioctl_.empty()) e.Set("ioctl", Napi::String::New(env, ioctl_));
      deferred_.Reject(e.Value());
      return;
    }
    try {
      deferred_.Resolve(done_ ? done_(env, res_) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  std::string ioctl_;
  Work work_;
  Done done_;
  Result res_;
};

Napi::Promise Queue(Napi::Env env, const char* syscall, const std::string& ioctlName, Work work, Done done = nullptr) {
  auto* w = new Worker(env, syscall, ioctlName, std::move(work), std::move(done));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// --- argument readers: TypeError/RangeError on malformed input ---

int32_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  // Range first: casting NaN, infinities or huge values to an integer is undefined behaviour.
  if (!std::isfinite(d) || d < -2147483648.0 || d > 2147483647.0 || d != std::trunc(d)) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be a 32-bit integer");
  }
  return static_cast<int32_t>(d);
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d < 0 || d > 4294967295.0 || d != std::trunc(d)) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be an integer in 0..2^32-1");
  }
  return static_cast<uint32_t>(d);
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsBigInt()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a bigint");
  bool lossless = false;
  uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(info.Env(), std::string(name) + " must be in 0..2^64-1");
  return v;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos || s.size() > 4096) throw Napi::TypeError::New(info.Env(), std::string(name) + " must not contain NUL");
  return s;
}

Napi::Buffer<char> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Buffer");
  return info[i].As<Napi::Buffer<char>>();
}

Napi::BigInt Big(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

// --- ioctl numbers by name ---

struct IoctlDef {
  const char* name;
  unsigned long request;
};

const IoctlDef kIoctls[] = {
    {"VFIO_GET_API_VERSION", VFIO_GET_API_VERSION},
    {"VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION},
    {"VFIO_SET_IOMMU", VFIO_SET_IOMMU},
    {"VFIO_GROUP_GET_STATUS", VFIO_GROUP_GET_STATUS},
    {"VFIO_GROUP_SET_CONTAINER", VFIO_GROUP_SET_CONTAINER},
    {"VFIO_GROUP_UNSET_CONTAINER", VFIO_GROUP_UNSET_CONTAINER},
    {"VFIO_GROUP_GET_DEVICE_FD", VFIO_GROUP_GET_DEVICE_FD},
    {"VFIO_DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO},
    {"VFIO_IOMMU_SPAPR_TCE_GET_INFO", VFIO_IOMMU_SPAPR_TCE_GET_INFO},
    {"VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA},
    {"VFIO_IOMMU_UNMAP_DMA", VFIO_IOMMU_UNMAP_DMA},
    {"VFIO_IOMMU_ENABLE", VFIO_IOMMU_ENABLE},
    {"VFIO_IOMMU_DISABLE", VFIO_IOMMU_DISABLE},
    {"VFIO_IOMMU_SPAPR_REGISTER_MEMORY", VFIO_IOMMU_SPAPR_REGISTER_MEMORY},
    {"VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY", VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY},
    {"VFIO_IOMMU_SPAPR_TCE_CREATE", VFIO_IOMMU_SPAPR_TCE_CREATE},
    {"VFIO_IOMMU_SPAPR_TCE_REMOVE", VFIO_IOMMU_SPAPR_TCE_REMOVE},
    {"VFIO_EEH_PE_OP", VFIO_EEH_PE_OP},
};

// The simple ioctls whose argument is an integer value, not a struct.
bool ValueIoctl(const std::string& name, unsigned long* request) {
  static const char* const allowed[] = {"VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION", "VFIO_SET_IOMMU",
                                        "VFIO_GROUP_UNSET_CONTAINER", "VFIO_IOMMU_ENABLE", "VFIO_IOMMU_DISABLE"};
  for (const char* a : allowed) {
    if (name == a) {
      for (const auto& d : kIoctls) {
        if (name == d.name) {
          *request = d.request;
          return true;
        }
      }
    }
  }
  return false;
}

// --- open / close ---

Napi::Value Open(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info, 0, "path");
  return Queue(info.Env(), "open", "", [path](Result& r) {
    int fd = RetryEintr([&] { return open(path.c_str(), O_RDWR | O_CLOEXEC); });
    if (fd < 0) r.err = errno;
    r.ret = fd;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.ret)); });
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  return Queue(info.Env(), "close", "", [fd](Result& r) {
    if (close(fd) < 0 && errno != EINTR) r.err = errno;
  });
}

// ioctlValue(fd, name, arg): GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU, UNSET_CONTAINER, ENABLE, DISABLE.
// Resolves with the return value (CHECK_EXTENSION answers through it; never treated as an error here).
Napi::Value IoctlValue(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  std::string name = ArgString(info, 1, "name");
  uint32_t arg = ArgU32(info, 2, "arg");
  unsigned long request = 0;
  if (!ValueIoctl(name, &request)) throw Napi::TypeError::New(info.Env(), "not a value ioctl: " + name);
  return Queue(info.Env(), "ioctl", name, [fd, request, arg](Result& r) {
    int ret = RetryEintr([&] { return ioctl(fd, request, static_cast<unsigned long>(arg)); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.ret)); });
}

Napi::Value GroupGetStatus(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  uint32_t argsz = ArgU32(info, 1, "argsz");
  return Queue(info.Env(), "ioctl", "VFIO_GROUP_GET_STATUS", [fd, argsz](Result& r) {
    struct vfio_group_status st;
    memset(&st, 0, sizeof st);
    st.argsz = argsz;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_GROUP_GET_STATUS, &st); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
    r.u[0] = st.flags;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.u[0])); });
}

Napi::Value GroupSetContainer(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  int containerFd = ArgInt(info, 1, "containerFd");
  return Queue(info.Env(), "ioctl", "VFIO_GROUP_SET_CONTAINER", [fd, containerFd](Result& r) {
    int cfd = containerFd;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_GROUP_SET_CONTAINER, &cfd); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
  });
}

Napi::Value GroupGetDeviceFd(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  std::string name = ArgString(info, 1, "name");
  return Queue(info.Env(), "ioctl", "VFIO_GROUP_GET_DEVICE_FD", [fd, name](Result& r) {
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_GROUP_GET_DEVICE_FD, name.c_str()); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.ret)); });
}

Napi::Value DeviceGetRegionInfo(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  uint32_t index = ArgU32(info, 1, "index");
  return Queue(info.Env(), "ioctl", "VFIO_DEVICE_GET_REGION_INFO", [fd, index](Result& r) {
    struct vfio_region_info ri;
    memset(&ri, 0, sizeof ri);
    ri.argsz = sizeof ri;
    ri.index = index;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &ri); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
    r.u[0] = ri.flags;
    r.u[1] = ri.size;
    r.u[2] = ri.offset;
  }, [](Napi::Env env, Result& r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("flags", Napi::Number::New(env, static_cast<double>(r.u[0])));
    o.Set("size", Big(env, r.u[1]));
    o.Set("offset", Big(env, r.u[2]));
    return o;
  });
}

Napi::Value SpaprTceGetInfo(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  uint32_t argsz = ArgU32(info, 1, "argsz");
  return Queue(info.Env(), "ioctl", "VFIO_IOMMU_SPAPR_TCE_GET_INFO", [fd, argsz](Result& r) {
    // The kernel writes min(argsz, sizeof) bytes; the struct is whole and zeroed whatever argsz claims.
    struct vfio_iommu_spapr_tce_info ti;
    memset(&ti, 0, sizeof ti);
    ti.argsz = argsz > sizeof ti ? sizeof ti : argsz;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_SPAPR_TCE_GET_INFO, &ti); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
    r.u[0] = ti.flags;
    r.u[1] = (static_cast<uint64_t>(ti.dma32_window_start) << 32) | ti.dma32_window_size;
    r.u[2] = ti.ddw.pgsizes;
    r.u[3] = (static_cast<uint64_t>(ti.ddw.max_dynamic_windows_supported) << 32) | ti.ddw.levels;
  }, [](Napi::Env env, Result& r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("flags", Napi::Number::New(env, static_cast<double>(r.u[0])));
    o.Set("dma32WindowStart", Napi::Number::New(env, static_cast<double>(r.u[1] >> 32)));
    o.Set("dma32WindowSize", Napi::Number::New(env, static_cast<double>(r.u[1] & 0xffffffffu)));
    o.Set("pgsizes", Big(env, r.u[2]));
    o.Set("maxDynamicWindowsSupported", Napi::Number::New(env, static_cast<double>(r.u[3] >> 32)));
    o.Set("levels", Napi::Number::New(env, static_cast<double>(r.u[3] & 0xffffffffu)));
    return o;
  });
}

// mapDma(fd, argsz, flags, vaddr, iova, size)
Napi::Value MapDma(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  struct vfio_iommu_type1_dma_map m;
  memset(&m, 0, sizeof m);
  m.argsz = ArgU32(info, 1, "argsz");
  m.flags = ArgU32(info, 2, "flags");
  m.vaddr = ArgU64(info, 3, "vaddr");
  m.iova = ArgU64(info, 4, "iova");
  m.size = ArgU64(info, 5, "size");
  return Queue(info.Env(), "ioctl", "VFIO_IOMMU_MAP_DMA", [fd, m](Result& r) {
    struct vfio_iommu_type1_dma_map arg = m;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_MAP_DMA, &arg); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
  });
}

// unmapDma(fd, argsz, flags, iova, size)
Napi::Value UnmapDma(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  struct vfio_iommu_type1_dma_unmap m;
  memset(&m, 0, sizeof m);
  m.argsz = ArgU32(info, 1, "argsz");
  m.flags = ArgU32(info, 2, "flags");
  m.iova = ArgU64(info, 3, "iova");
  m.size = ArgU64(info, 4, "size");
  return Queue(info.Env(), "ioctl", "VFIO_IOMMU_UNMAP_DMA", [fd, m](Result& r) {
    struct vfio_iommu_type1_dma_unmap arg = m;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &arg); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
  });
}

// registerMemory(fd, unregister: boolean, argsz, flags, vaddr, size)
Napi::Value RegisterMemory(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBoolean()) throw Napi::TypeError::New(info.Env(), "unregister must be a boolean");
  bool unregister = info[1].As<Napi::Boolean>().Value();
  struct vfio_iommu_spapr_register_memory m;
  memset(&m, 0, sizeof m);
  m.argsz = ArgU32(info, 2, "argsz");
  m.flags = ArgU32(info, 3, "flags");
  m.vaddr = ArgU64(info, 4, "vaddr");
  m.size = ArgU64(info, 5, "size");
  unsigned long request = unregister ? VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY : VFIO_IOMMU_SPAPR_REGISTER_MEMORY;
  return Queue(info.Env(), "ioctl", unregister ? "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY" : "VFIO_IOMMU_SPAPR_REGISTER_MEMORY",
               [fd, m, request](Result& r) {
                 struct vfio_iommu_spapr_register_memory arg = m;
                 int ret = RetryEintr([&] { return ioctl(fd, request, &arg); });
                 if (ret < 0) r.err = errno;
                 r.ret = ret;
                 r.positiveIsError = true;
               });
}

// tceCreate(fd, argsz, flags, pageShift, windowSize, levels) -> start_addr
Napi::Value TceCreate(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  struct vfio_iommu_spapr_tce_create c;
  memset(&c, 0, sizeof c);
  uint32_t argsz = ArgU32(info, 1, "argsz");
  c.argsz = argsz > sizeof c ? sizeof c : argsz;
  c.flags = ArgU32(info, 2, "flags");
  c.page_shift = ArgU32(info, 3, "pageShift");
  c.window_size = ArgU64(info, 4, "windowSize");
  c.levels = ArgU32(info, 5, "levels");
  return Queue(info.Env(), "ioctl", "VFIO_IOMMU_SPAPR_TCE_CREATE", [fd, c](Result& r) {
    struct vfio_iommu_spapr_tce_create arg = c;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_SPAPR_TCE_CREATE, &arg); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
    r.u[0] = arg.start_addr;
  }, [](Napi::Env env, Result& r) { return Big(env, r.u[0]); });
}

// tceRemove(fd, argsz, flags, startAddr)
Napi::Value TceRemove(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  struct vfio_iommu_spapr_tce_remove m;
  memset(&m, 0, sizeof m);
  uint32_t argsz = ArgU32(info, 1, "argsz");
  m.argsz = argsz > sizeof m ? sizeof m : argsz;
  m.flags = ArgU32(info, 2, "flags");
  m.start_addr = ArgU64(info, 3, "startAddr");
  return Queue(info.Env(), "ioctl", "VFIO_IOMMU_SPAPR_TCE_REMOVE", [fd, m](Result& r) {
    struct vfio_iommu_spapr_tce_remove arg = m;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_SPAPR_TCE_REMOVE, &arg); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
    r.positiveIsError = true;
  });
}

// eehPeOp(fd, argsz, flags, op) -> the return value (GET_STATE's state)
Napi::Value EehPeOp(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  struct vfio_eeh_pe_op m;
  memset(&m, 0, sizeof m);
  uint32_t argsz = ArgU32(info, 1, "argsz");
  m.argsz = argsz > sizeof m ? sizeof m : argsz;
  m.flags = ArgU32(info, 2, "flags");
  m.op = ArgU32(info, 3, "op");
  return Queue(info.Env(), "ioctl", "VFIO_EEH_PE_OP", [fd, m](Result& r) {
    struct vfio_eeh_pe_op arg = m;
    int ret = RetryEintr([&] { return ioctl(fd, VFIO_EEH_PE_OP, &arg); });
    if (ret < 0) r.err = errno;
    r.ret = ret;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.ret)); });
}

// --- files and memory ---

Napi::Value Pread(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  uint32_t length = ArgU32(info, 1, "length");
  uint64_t offset = ArgU64(info, 2, "offset");
  if (length > (16u << 20)) throw Napi::RangeError::New(info.Env(), "length must be at most 16 MiB");
  if (offset > static_cast<uint64_t>(INT64_MAX)) throw Napi::RangeError::New(info.Env(), "offset too large");
  return Queue(info.Env(), "pread", "", [fd, length, offset](Result& r) {
    r.data.resize(length);
    ssize_t n = RetryEintr([&] { return pread(fd, r.data.data(), length, static_cast<off_t>(offset)); });
    if (n < 0) r.err = errno;
    else r.data.resize(static_cast<size_t>(n));
  }, [](Napi::Env env, Result& r) { return Napi::Buffer<char>::Copy(env, r.data.data(), r.data.size()); });
}

Napi::Value Pwrite(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  Napi::Buffer<char> buf = ArgBuffer(info, 1, "data");
  uint64_t offset = ArgU64(info, 2, "offset");
  if (offset > static_cast<uint64_t>(INT64_MAX)) throw Napi::RangeError::New(info.Env(), "offset too large");
  auto data = std::make_shared<std::vector<char>>(buf.Data(), buf.Data() + buf.Length());
  return Queue(info.Env(), "pwrite", "", [fd, data, offset](Result& r) {
    ssize_t n = RetryEintr([&] { return pwrite(fd, data->data(), data->size(), static_cast<off_t>(offset)); });
    if (n < 0) r.err = errno;
    r.ret = n;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.ret)); });
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  uint32_t hugeShift = ArgU32(info, 1, "hugePageShift");  // 0 = normal pages
  if (name.size() > 249) throw Napi::RangeError::New(info.Env(), "name too long");
  if (hugeShift != 0 && (hugeShift < 16 || hugeShift > 40)) throw Napi::RangeError::New(info.Env(), "hugePageShift out of range");
  return Queue(info.Env(), "memfd_create", "", [name, hugeShift](Result& r) {
    unsigned int flags = MFD_CLOEXEC;
    if (hugeShift != 0) flags |= MFD_HUGETLB | (hugeShift << MFD_HUGE_SHIFT);
    int fd = memfd_create(name.c_str(), flags);
    if (fd < 0) r.err = errno;
    r.ret = fd;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.ret)); });
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  uint64_t size = ArgU64(info, 1, "size");
  if (size > static_cast<uint64_t>(INT64_MAX)) throw Napi::RangeError::New(info.Env(), "size too large");
  return Queue(info.Env(), "ftruncate", "", [fd, size](Result& r) {
    int ret = RetryEintr([&] { return ftruncate(fd, static_cast<off_t>(size)); });
    if (ret < 0) r.err = errno;
  });
}

// mmap(fd, size, offset, populate) -> address; a shared read-write mapping, recorded for readMemory.
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  int fd = ArgInt(info, 0, "fd");
  uint64_t size = ArgU64(info, 1, "size");
  uint64_t offset = ArgU64(info, 2, "offset");
  bool populate = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
  if (size == 0 || size > (1ULL << 46) || offset > static_cast<uint64_t>(INT64_MAX)) {
    throw Napi::RangeError::New(info.Env(), "size must be in 1..2^46 and offset a file offset");
  }
  return Queue(info.Env(), "mmap", "", [data, fd, size, offset, populate](Result& r) {
    int flags = MAP_SHARED | (populate ? MAP_POPULATE : 0);
    void* p = mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE, flags, fd, static_cast<off_t>(offset));
    if (p == MAP_FAILED) {
      r.err = errno;
      return;
    }
    std::lock_guard<std::mutex> lock(data->mu);
    data->maps[reinterpret_cast<uintptr_t>(p)] = static_cast<size_t>(size);
    r.u[0] = reinterpret_cast<uintptr_t>(p);
  }, [](Napi::Env env, Result& r) { return Big(env, r.u[0]); });
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  uint64_t addr = ArgU64(info, 0, "address");
  uint64_t size = ArgU64(info, 1, "size");
  return Queue(info.Env(), "munmap", "", [data, addr, size](Result& r) {
    std::lock_guard<std::mutex> lock(data->mu);
    auto it = data->maps.find(static_cast<uintptr_t>(addr));
    if (it == data->maps.end() || it->second != size) {
      r.err = EINVAL;  // only whole mappings made here: anything else could unmap the runtime's memory
      return;
    }
    if (munmap(reinterpret_cast<void*>(it->first), it->second) < 0) {
      r.err = errno;
      return;
    }
    data->maps.erase(it);
  });
}

// Finds a recorded mapping holding [addr, addr+len); the caller holds the lock.
bool Inside(AddonData* data, uint64_t addr, uint64_t len) {
  auto it = data->maps.upper_bound(static_cast<uintptr_t>(addr));
  if (it == data->maps.begin()) return false;
  --it;
  // Offset into the mapping first: an address past its end must not wrap around.
  uint64_t offset = addr - it->first;
  return offset <= it->second && len <= it->second - offset;
}

Napi::Value ReadMemory(const Napi::CallbackInfo& info) {
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  uint64_t addr = ArgU64(info, 0, "address");
  uint32_t len = ArgU32(info, 1, "length");
  std::lock_guard<std::mutex> lock(data->mu);
  if (!Inside(data, addr, len)) throw Napi::RangeError::New(info.Env(), "not inside a mapping made by this addon");
  return Napi::Buffer<char>::Copy(info.Env(), reinterpret_cast<const char*>(static_cast<uintptr_t>(addr)), len);
}

Napi::Value WriteMemory(const Napi::CallbackInfo& info) {
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  uint64_t addr = ArgU64(info, 0, "address");
  Napi::Buffer<char> buf = ArgBuffer(info, 1, "data");
  std::lock_guard<std::mutex> lock(data->mu);
  if (!Inside(data, addr, buf.Length())) throw Napi::RangeError::New(info.Env(), "not inside a mapping made by this addon");
  memcpy(reinterpret_cast<void*>(static_cast<uintptr_t>(addr)), buf.Data(), buf.Length());
  return info.Env().Undefined();
}

Napi::Value GetMemlock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) < 0) throw MakeError(env, errno, "getrlimit", "");
  Napi::Object o = Napi::Object::New(env);
  o.Set("soft", rl.rlim_cur == RLIM_INFINITY ? env.Null() : Napi::Value(Big(env, rl.rlim_cur)));
  o.Set("hard", rl.rlim_max == RLIM_INFINITY ? env.Null() : Napi::Value(Big(env, rl.rlim_max)));
  return o;
}

// --- unix sockets and SCM_RIGHTS ---

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  return Queue(info.Env(), "socketpair", "", [](Result& r) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
      r.err = errno;
      return;
    }
    r.fds = {sv[0], sv[1]};
  }, [](Napi::Env env, Result& r) {
    Napi::Array a = Napi::Array::New(env, 2);
    a.Set(0u, Napi::Number::New(env, r.fds[0]));
    a.Set(1u, Napi::Number::New(env, r.fds[1]));
    return a;
  });
}

constexpr size_t kMaxFds = 253;  // SCM_MAX_FD

Napi::Value SendFds(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  Napi::Buffer<char> buf = ArgBuffer(info, 1, "data");
  if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(info.Env(), "fds must be an array");
  Napi::Array arr = info[2].As<Napi::Array>();
  if (arr.Length() > kMaxFds) throw Napi::RangeError::New(info.Env(), "at most 253 fds");
  if (buf.Length() == 0) throw Napi::RangeError::New(info.Env(), "data must not be empty");
  std::vector<int> fds;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsNumber()) throw Napi::TypeError::New(info.Env(), "fds must be numbers");
    double d = v.As<Napi::Number>().DoubleValue();
    // Never let NaN or 2.9 turn into another fd that would cross to the peer.
    if (!std::isfinite(d) || d < 0 || d > 2147483647.0 || d != std::trunc(d)) {
      throw Napi::RangeError::New(info.Env(), "fds must be integers in 0..2^31-1");
    }
    fds.push_back(static_cast<int>(d));
  }
  auto data = std::make_shared<std::vector<char>>(buf.Data(), buf.Data() + buf.Length());
  return Queue(info.Env(), "sendmsg", "", [fd, data, fds](Result& r) {
    struct iovec iov;
    iov.iov_base = data->data();
    iov.iov_len = data->size();
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control;
    if (!fds.empty()) {
      control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      struct cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = RetryEintr([&] { return sendmsg(fd, &msg, MSG_NOSIGNAL); });
    if (n < 0) r.err = errno;
    r.ret = n;
  }, [](Napi::Env env, Result& r) { return Napi::Number::New(env, static_cast<double>(r.ret)); });
}

Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  uint32_t maxData = ArgU32(info, 1, "maxData");
  uint32_t maxFds = ArgU32(info, 2, "maxFds");
  if (maxData == 0 || maxData > (16u << 20)) throw Napi::RangeError::New(info.Env(), "maxData must be 1..16 MiB");
  if (maxFds > kMaxFds) throw Napi::RangeError::New(info.Env(), "maxFds must be at most 253");
  return Queue(info.Env(), "recvmsg", "", [fd, maxData, maxFds](Result& r) {
    r.data.resize(maxData);
    struct iovec iov;
    iov.iov_base = r.data.data();
    iov.iov_len = r.data.size();
    std::vector<char> control(CMSG_SPACE(sizeof(int) * (maxFds > 0 ? maxFds : 1)), 0);
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    ssize_t n = RetryEintr([&] { return recvmsg(fd, &msg, MSG_CMSG_CLOEXEC); });
    if (n < 0) {
      r.err = errno;
      return;
    }
    r.data.resize(static_cast<size_t>(n));
    for (struct cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int got;
        memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
        if (r.fds.size() < maxFds) {
          r.fds.push_back(got);
        } else {
          // The control buffer's alignment can leave room for more fds than asked:
          // more than maxFds is the same failure as MSG_CTRUNC.
          close(got);
          r.u[1] = 1;
        }
      }
    }
    if ((msg.msg_flags & MSG_CTRUNC) || r.u[1] == 1) {
      // Some fds were dropped by the kernel: a partial set is useless, close what came.
      for (int got : r.fds) close(got);
      r.fds.clear();
      r.u[0] = 1;
    }
  }, [maxFds](Napi::Env env, Result& r) {
    if (r.u[0] == 1) {
      Napi::Error e = Napi::Error::New(env,
          "recvmsg: the passed fds were cut off (MSG_CTRUNC): this process is at its open-file limit "
          "(RLIMIT_NOFILE, ulimit -n) or more than maxFds (" + std::to_string(maxFds) + ") were sent; "
          "the fds that arrived were closed");
      e.Set("code", Napi::String::New(env, "MSG_CTRUNC"));
      e.Set("syscall", Napi::String::New(env, "recvmsg"));
      throw e;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("data", Napi::Buffer<char>::Copy(env, r.data.data(), r.data.size()));
    Napi::Array a = Napi::Array::New(env, r.fds.size());
    for (size_t i = 0; i < r.fds.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, r.fds[i]));
    o.Set("fds", a);
    return o;
  });
}

// --- constants ---

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  auto set = [&](const char* k, double v) { c.Set(k, Napi::Number::New(env, v)); };
  set("VFIO_API_VERSION", VFIO_API_VERSION);
  set("VFIO_TYPE1_IOMMU", VFIO_TYPE1_IOMMU);
  set("VFIO_SPAPR_TCE_IOMMU", VFIO_SPAPR_TCE_IOMMU);
  set("VFIO_SPAPR_TCE_v2_IOMMU", VFIO_SPAPR_TCE_v2_IOMMU);
  set("VFIO_EEH", VFIO_EEH);
  set("VFIO_GROUP_FLAGS_VIABLE", VFIO_GROUP_FLAGS_VIABLE);
  set("VFIO_GROUP_FLAGS_CONTAINER_SET", VFIO_GROUP_FLAGS_CONTAINER_SET);
  set("VFIO_DMA_MAP_FLAG_READ", VFIO_DMA_MAP_FLAG_READ);
  set("VFIO_DMA_MAP_FLAG_WRITE", VFIO_DMA_MAP_FLAG_WRITE);
  set("VFIO_IOMMU_SPAPR_INFO_DDW", VFIO_IOMMU_SPAPR_INFO_DDW);
  set("VFIO_EEH_PE_DISABLE", VFIO_EEH_PE_DISABLE);
  set("VFIO_EEH_PE_ENABLE", VFIO_EEH_PE_ENABLE);
  set("VFIO_EEH_PE_UNFREEZE_IO", VFIO_EEH_PE_UNFREEZE_IO);
  set("VFIO_EEH_PE_UNFREEZE_DMA", VFIO_EEH_PE_UNFREEZE_DMA);
  set("VFIO_EEH_PE_GET_STATE", VFIO_EEH_PE_GET_STATE);
  set("VFIO_EEH_PE_RESET_DEACTIVATE", VFIO_EEH_PE_RESET_DEACTIVATE);
  set("VFIO_EEH_PE_RESET_HOT", VFIO_EEH_PE_RESET_HOT);
  set("VFIO_EEH_PE_RESET_FUNDAMENTAL", VFIO_EEH_PE_RESET_FUNDAMENTAL);
  set("VFIO_EEH_PE_CONFIGURE", VFIO_EEH_PE_CONFIGURE);
  set("VFIO_EEH_PE_INJECT_ERR", VFIO_EEH_PE_INJECT_ERR);
  set("VFIO_EEH_PE_STATE_NORMAL", VFIO_EEH_PE_STATE_NORMAL);
  set("VFIO_EEH_PE_STATE_RESET", VFIO_EEH_PE_STATE_RESET);
  set("VFIO_EEH_PE_STATE_STOPPED", VFIO_EEH_PE_STATE_STOPPED);
  set("VFIO_EEH_PE_STATE_STOPPED_DMA", VFIO_EEH_PE_STATE_STOPPED_DMA);
  set("VFIO_EEH_PE_STATE_UNAVAIL", VFIO_EEH_PE_STATE_UNAVAIL);
  set("VFIO_PCI_BAR0_REGION_INDEX", VFIO_PCI_BAR0_REGION_INDEX);
  set("VFIO_PCI_CONFIG_REGION_INDEX", VFIO_PCI_CONFIG_REGION_INDEX);
  set("PAGE_SIZE", static_cast<double>(sysconf(_SC_PAGESIZE)));
  return c;
}

// [[errno, name, message], ...] for every errno the C library names (1..4095).
Napi::Array ErrnoTable(Napi::Env env) {
  Napi::Array a = Napi::Array::New(env);
  uint32_t n = 0;
  for (int err = 1; err < 4096; err++) {
    const char* name = ErrnoName(err);
    if (name == nullptr) continue;
    Napi::Array row = Napi::Array::New(env, 3);
    row.Set(0u, Napi::Number::New(env, err));
    row.Set(1u, Napi::String::New(env, name));
    row.Set(2u, Napi::String::New(env, strerror(err)));
    a.Set(n++, row);
  }
  return a;
}

Napi::Object IoctlNumbers(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  for (const auto& d : kIoctls) o.Set(d.name, Napi::Number::New(env, static_cast<double>(d.request)));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<AddonData>(new AddonData());
  exports.Set("constants", Constants(env));
  exports.Set("ioctlNumbers", IoctlNumbers(env));
  exports.Set("errnoTable", ErrnoTable(env));
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("ioctlValue", Napi::Function::New(env, IoctlValue, "ioctlValue"));
  exports.Set("groupGetStatus", Napi::Function::New(env, GroupGetStatus, "groupGetStatus"));
  exports.Set("groupSetContainer", Napi::Function::New(env, GroupSetContainer, "groupSetContainer"));
  exports.Set("groupGetDeviceFd", Napi::Function::New(env, GroupGetDeviceFd, "groupGetDeviceFd"));
  exports.Set("deviceGetRegionInfo", Napi::Function::New(env, DeviceGetRegionInfo, "deviceGetRegionInfo"));
  exports.Set("spaprTceGetInfo", Napi::Function::New(env, SpaprTceGetInfo, "spaprTceGetInfo"));
  exports.Set("mapDma", Napi::Function::New(env, MapDma, "mapDma"));
  exports.Set("unmapDma", Napi::Function::New(env, UnmapDma, "unmapDma"));
  exports.Set("registerMemory", Napi::Function::New(env, RegisterMemory, "registerMemory"));
  exports.Set("tceCreate", Napi::Function::New(env, TceCreate, "tceCreate"));
  exports.Set("tceRemove", Napi::Function::New(env, TceRemove, "tceRemove"));
  exports.Set("eehPeOp", Napi::Function::New(env, EehPeOp, "eehPeOp"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("readMemory", Napi::Function::New(env, ReadMemory, "readMemory"));
  exports.Set("writeMemory", Napi::Function::New(env, WriteMemory, "writeMemory"));
  exports.Set("getMemlock", Napi::Function::New(env, GetMemlock, "getMemlock"));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("sendFds", Napi::Function::New(env, SendFds, "sendFds"));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds, "recvFds"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vfio_native, Init)
