{
  "targets": [
    {
      "target_name": "vfio_native",
      "sources": ["native/vfio.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "_FORTIFY_SOURCE=2"],
      "cflags": ["-Wall", "-Wextra", "-Wformat", "-Werror=format-security", "-fstack-protector-strong", "-fPIC", "-O2"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wformat", "-Werror=format-security", "-fstack-protector-strong", "-fPIC", "-O2"],
      "ldflags": ["-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack"],
      "conditions": [
        ["OS!='linux'", { "sources!": ["native/vfio.cc"], "type": "none" }]
      ]
    },
    {
      "target_name": "vfio_uevent",
      "sources": ["native/uevent.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "_FORTIFY_SOURCE=2"],
      "cflags": ["-Wall", "-Wextra", "-Wformat", "-Werror=format-security", "-fstack-protector-strong", "-fPIC", "-O2"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wformat", "-Werror=format-security", "-fstack-protector-strong", "-fPIC", "-O2"],
      "ldflags": ["-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack"],
      "conditions": [
        ["OS!='linux'", { "sources!": ["native/uevent.cc"], "type": "none" }]
      ]
    },
    {
      "target_name": "c_heap",
      "sources": ["native/c-heap.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "_FORTIFY_SOURCE=2"],
      "cflags": ["-Wall", "-Wextra", "-Wformat", "-Werror=format-security", "-fstack-protector-strong", "-fPIC", "-O2"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wformat", "-Werror=format-security", "-fstack-protector-strong", "-fPIC", "-O2"],
      "ldflags": ["-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack"]
    }
  ]
}
