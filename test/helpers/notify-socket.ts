/**
 * What systemd is for a `Type=notify` service, for tests: a Unix datagram socket that
 * collects the sd_notify messages a process sends to $NOTIFY_SOCKET. Through bun:ffi,
 * as Bun has no Unix datagram sockets; reading never blocks.
 */
import { unlinkSync } from "node:fs";
import { dlopen, FFIType, ptr } from "bun:ffi";
import { sockaddrUn } from "../../src/cli/sd-notify.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const RECV_BYTES_MAX = 4096;

const libc = dlopen("libc.so.6", {
  socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  recv: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i64 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
}).symbols;

export class NotifySocket {
  private readonly received: string[] = [];

  private constructor(
    private readonly fd: number,
    readonly path: string,
  ) {}

  static open(path: string): NotifySocket {
    const fd = libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new Error("socket() failed");
    const address = sockaddrUn(path);
    if (libc.bind(fd, ptr(address), 2 + new TextEncoder().encode(path).length + 1) !== 0) throw new Error(`bind(${path}) failed`);
    return new NotifySocket(fd, path);
  }

  /** Every message received so far, in order. */
  messages(): string[] {
    const buffer = new Uint8Array(RECV_BYTES_MAX);
    for (;;) {
      const length = Number(libc.recv(this.fd, ptr(buffer), RECV_BYTES_MAX, 0));
      if (length < 0) break;
      this.received.push(new TextDecoder().decode(buffer.subarray(0, length)));
    }
    return [...this.received];
  }

  close(): void {
    libc.close(this.fd);
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone.
    }
  }
}
