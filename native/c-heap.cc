// Process housekeeping for the C heap: hands glibc's free pages back to the
// kernel. glibc keeps what a burst of allocations freed (sysfs reads during a
// full scan, gRPC buffers) as free chunks inside its arenas, and returns only
// the top of the main heap on its own; malloc_trim(0) also releases the free
// pages in the middle of every arena (MADV_DONTNEED), which is most of them
// after a scan. Elsewhere (musl, macOS) there is nothing to do.
//
// JS surface (see src/c-heap.ts):
//   trim() -> boolean   true when glibc returned memory to the kernel
//   supported: boolean  whether trim() can do anything on this C library
#include <napi.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

Napi::Value Trim(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("trim", Napi::Function::New(env, Trim, "trim"));
#if defined(__GLIBC__)
  exports.Set("supported", Napi::Boolean::New(env, true));
#else
  exports.Set("supported", Napi::Boolean::New(env, false));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(c_heap, Init)
