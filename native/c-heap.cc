// Process housekeeping for the C heap: hands glibc's free pages back to the
// kernel. glibc keeps what a burst of allocations freed (sysfs reads during a
// full scan, gRPC buffers) as free chunks inside its arenas, and returns only
// the top of the main heap on its own; malloc_trim(0) also releases the free
// pages in the middle of every arena (MADV_DONTNEED), which is most of them
// after a scan. Elsewhere (musl, macOS) there is nothing to do.
//
// JS surface (see src/c-heap.ts):
//   trim() -> Promise<boolean>  true when glibc returned memory to the kernel (runs on libuv's pool)
//   supported: boolean  whether trim() can do anything on this C library
#include <napi.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

// malloc_trim walks every arena under its lock and madvises the free pages:
// up to several ms on a heap a full scan left behind, so it runs on libuv's
// pool and the event loop stays free. Other threads' mallocs wait on the arena
// lock for as long, as they would for any allocation.
class TrimWorker : public Napi::AsyncWorker {
 public:
  explicit TrimWorker(Napi::Env env)
      : Napi::AsyncWorker(env, "c_heap_trim"), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
#if defined(__GLIBC__)
    released_ = malloc_trim(0) != 0;
#endif
  }

  void OnOK() override { deferred_.Resolve(Napi::Boolean::New(Env(), released_)); }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  bool released_ = false;
};

Napi::Value Trim(const Napi::CallbackInfo& info) {
  auto* worker = new TrimWorker(info.Env());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
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
