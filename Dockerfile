# syntax=docker/dockerfile:1
#
# The power-vfio-device-plugin image: multi-arch, ppc64le first.
#
#   docker buildx build --platform linux/ppc64le,linux/amd64 -t <registry>/power-vfio-device-plugin:<version> --push .
#
# Each platform builds natively (on a ppc64le builder, or under QEMU emulation
# via binfmt on another machine). The native addon compiles against that
# platform's <linux/vfio.h>, whose ioctl numbers differ between powerpc and
# x86, so it is never cross-compiled from the build host's headers.
#
# Both base images are the official multi-arch Node.js images on the current
# LTS (Node 24; they publish linux/ppc64le and linux/amd64). The runtime stage
# is the slim image with npm, npx, corepack and yarn removed.
ARG NODE_IMAGE=node:24-bookworm-slim

# --- build: the native addon, the TypeScript build, production dependencies ---
FROM ${NODE_IMAGE} AS build
# node-gyp needs Python, make and a C++ compiler; g++ pulls in linux-libc-dev,
# which carries <linux/vfio.h>.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The build context is an allowlist (.dockerignore): package files, sources,
# .proto files and the addon's sources only.
COPY . .
# npm ci runs the package's install script (node-gyp-build compiles
# binding.gyp into build/Release) and its prepare script (tsc).
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
RUN npm run build
# Fail the image build, not the pod, when the addon did not build for this platform.
RUN node -e "require('./build/Release/vfio_native.node'); require('./build/Release/vfio_uevent.node'); require('./build/Release/c_heap.node')"
RUN npm prune --omit=dev --no-audit --no-fund
# What the runtime needs, laid out as the package: package.json, dist/ (bin
# power-vfio-device-plugin = dist/cli/entry.js, and the workload client's bin),
# proto/ (loaded at run time), the C handoff client's sources and the docs
# (for workloads to copy), node_modules/ without dev dependencies, and the
# compiled addons.
RUN mkdir -p /out \
 && cp -a package.json README.md dist proto clients docs node_modules /out/ \
 && if [ -d build/Release ]; then mkdir -p /out/build && cp -a build/Release /out/build/; fi \
 && rm -f /out/dist/.tsbuildinfo

# --- runtime ---
FROM ${NODE_IMAGE}
LABEL org.opencontainers.image.title="power-vfio-device-plugin" \
      org.opencontainers.image.description="Kubernetes device plugin for VFIO PCI passthrough on IBM POWER" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing here installs packages at run time: drop the package managers.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn-* /usr/local/bin/yarn /usr/local/bin/yarnpkg
WORKDIR /app
COPY --from=build /out /app
# Every "bin" of package.json on PATH: power-vfio-device-plugin, and the
# workload client power-vfio-handoff, which workloads can copy out of this
# image (for example from an init container) or run from it.
RUN node -e "const p=require('/app/package.json');const fs=require('fs');for(const[n,f]of Object.entries(typeof p.bin==='string'?{[p.name]:p.bin}:p.bin||{})){fs.chmodSync('/app/'+f,0o755);fs.symlinkSync('/app/'+f,'/usr/local/bin/'+n)}"
ENV NODE_ENV=production
# Two malloc arenas instead of one per thread that ever contended (libuv's
# pool, V8's helpers): measured idle at 1024 groups, 5-6 MiB less resident
# with no change in scan time. Read by glibc at start, so it is set here.
ENV MALLOC_ARENA_MAX=2
# Root, on purpose: the plugin opens /dev/vfio/* (root's, mode 0600 on the
# host), creates sockets in the kubelet's root-owned device-plugins directory
# and connects to its PodResources socket. The chart runs it privileged for
# the device cgroup; see charts/power-vfio-device-plugin/templates/daemonset.yaml.
USER 0:0
EXPOSE 9101
ENTRYPOINT ["node", "/app/dist/cli/entry.js"]
CMD ["run"]
