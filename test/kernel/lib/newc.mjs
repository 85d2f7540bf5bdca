// A writer for the cpio "newc" (SVR4, no CRC) format the Linux kernel unpacks
// as an initramfs. Each header is the magic "070701" followed by 13 eight-digit
// hex fields: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
// rdevmajor, rdevminor, namesize (including the NUL), check. The name follows,
// then the data; both are padded to a multiple of 4 bytes. The archive ends
// with an entry named "TRAILER!!!". The kernel creates entries in order, so a
// directory must come before anything inside it: addParents() takes care of it.
import { readFileSync, readdirSync, lstatSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n) {
  return (n >>> 0).toString(16).padStart(8, '0');
}
function pad4(n) {
  return (4 - (n % 4)) % 4;
}

export class NewcWriter {
  constructor() {
    this.entries = new Map(); // path -> { mode, data, rdev }
    this.ino = 1;
  }

  static norm(p) {
    return p.replace(/^\/+/, '').replace(/\/+$/, '').replace(/\/+/g, '/');
  }

  addParents(p) {
    const parts = NewcWriter.norm(p).split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!this.entries.has(dir)) this.entries.set(dir, { mode: S_IFDIR | 0o755, data: null });
    }
  }

  dir(p, perm = 0o755) {
    const n = NewcWriter.norm(p);
    this.addParents(n);
    const e = this.entries.get(n);
    if (!e || (e.mode & 0o170000) === S_IFDIR) this.entries.set(n, { mode: S_IFDIR | perm, data: null });
    return this;
  }

  file(p, data, perm = 0o644) {
    const n = NewcWriter.norm(p);
    this.addParents(n);
    this.entries.delete(n);
    this.entries.set(n, { mode: S_IFREG | perm, data: Buffer.isBuffer(data) ? data : Buffer.from(data) });
    return this;
  }

  symlink(p, target) {
    const n = NewcWriter.norm(p);
    this.addParents(n);
    this.entries.delete(n);
    this.entries.set(n, { mode: S_IFLNK | 0o777, data: Buffer.from(target) });
    return this;
  }

  charDev(p, major, minor, perm = 0o600) {
    const n = NewcWriter.norm(p);
    this.addParents(n);
    this.entries.set(n, { mode: S_IFCHR | perm, data: null, rdev: [major, minor] });
    return this;
  }

  /** Copy a host directory tree to `dest`; `filter(relPath, stat)` may return false to leave an entry out. */
  tree(hostDir, dest, filter = () => true) {
    const walk = (d, rel) => {
      for (const name of readdirSync(d).sort()) {
        const p = join(d, name);
        const r = rel ? `${rel}/${name}` : name;
        const st = lstatSync(p);
        if (!filter(r, st)) continue;
        const target = `${dest}/${r}`;
        if (st.isSymbolicLink()) this.symlink(target, readlinkSync(p));
        else if (st.isDirectory()) {
          this.dir(target, st.mode & 0o7777);
          walk(p, r);
        } else if (st.isFile()) this.file(target, readFileSync(p), st.mode & 0o7777);
      }
    };
    walk(hostDir, '');
    return this;
  }

  header(name, mode, size, rdev = [0, 0], nlink = 1) {
    const nameBuf = Buffer.from(`${name}\0`);
    const fields = [this.ino++, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], nameBuf.length, 0];
    const h = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
    return [h, nameBuf, Buffer.alloc(pad4(h.length + nameBuf.length))];
  }

  /** The archive as one Buffer (uncompressed). */
  toBuffer() {
    const chunks = [];
    for (const [name, e] of this.entries) {
      const size = e.data ? e.data.length : 0;
      const nlink = (e.mode & 0o170000) === S_IFDIR ? 2 : 1;
      chunks.push(...this.header(name, e.mode, size, e.rdev, nlink));
      if (e.data) chunks.push(e.data, Buffer.alloc(pad4(size)));
    }
    chunks.push(...this.header('TRAILER!!!', 0, 0));
    const buf = Buffer.concat(chunks);
    // Pad the archive to a 512-byte boundary, as cpio does.
    return Buffer.concat([buf, Buffer.alloc((512 - (buf.length % 512)) % 512)]);
  }
}
