/**
 * The systemd notification protocol (sd_notify(3)), for `Type=notify` units: one
 * datagram per message ("READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=...") to the
 * AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract
 * namespace). Bun has no Unix datagram sockets, so the three libc calls are made through
 * bun:ffi. Without $NOTIFY_SOCKET (not under systemd) every call does nothing; a socket
 * that cannot be used is reported once by the caller and then ignored, because
 * notification is a courtesy to the supervisor, never a reason to stop a replica. So the
 * constructor never throws: a name that is no socket address at all (too long, say) is
 * the first `notify`'s failure, for the caller to report, and later calls do nothing.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
/** Never block the event loop on a supervisor that does not read: a full queue fails the send instead. */
const SOCK_NONBLOCK = 0o4000;
/** sizeof(struct sockaddr_un) on Linux: a 2-byte family and a 108-byte path. */
const SOCKADDR_UN_BYTES = 110;
const SUN_PATH_BYTES = 108;
/** Candidate names of the C library (glibc, then musl). */
const LIBC_NAMES = ["libc.so.6", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1"];

type Libc = {
  socket: (domain: number, type: number, protocol: number) => number;
  sendto: (fd: number, buf: number, len: number, flags: number, addr: number, addrlen: number) => number | bigint;
  close: (fd: number) => number;
};

function openLibc(): Libc {
  const symbols = {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    sendto: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i64 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  } as const;
  let lastError: unknown = null;
  for (const name of LIBC_NAMES) {
    try {
      return dlopen(name, symbols).symbols as unknown as Libc;
    } catch (error) {
      lastError = error;
    }
  }
  throw new Error(`cannot load the C library for sd_notify: ${String(lastError)}`);
}

/** struct sockaddr_un for `socketName` ("@" first: the abstract namespace). */
export function sockaddrUn(socketName: string): Uint8Array {
  const path = new TextEncoder().encode(socketName);
  if (path.length === 0 || path.length >= SUN_PATH_BYTES)
    throw new Error(`NOTIFY_SOCKET ${JSON.stringify(socketName)} is not a usable socket name`);
  const address = new Uint8Array(SOCKADDR_UN_BYTES);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(path, 2);
  if (socketName.startsWith("@")) address[2] = 0;
  return address;
}

export class SystemdNotifier {
  private libc: Libc | null = null;
  private fd = -1;
  private readonly address: Uint8Array | null;
  private readonly addressLength: number;
  /** Why $NOTIFY_SOCKET names no usable address; null once the first `notify` has said so, or when it does. */
  private unusableName: string | null = null;
  private readonly asked: boolean;

  constructor(socketName: string | undefined = process.env.NOTIFY_SOCKET) {
    this.asked = socketName !== undefined && socketName !== "";
    let address: Uint8Array | null = null;
    if (socketName !== undefined && socketName !== "") {
      try {
        address = sockaddrUn(socketName);
      } catch (error) {
        this.unusableName = (error as Error).message;
      }
    }
    this.address = address;
    // The abstract namespace counts exactly the name's bytes; a path ends at its NUL.
    this.addressLength =
      address === null || socketName === undefined
        ? 0
        : 2 + new TextEncoder().encode(socketName).length + (socketName.startsWith("@") ? 0 : 1);
  }

  /** Whether a supervisor asked for notifications ($NOTIFY_SOCKET is set, usable or not). */
  get enabled(): boolean {
    return this.asked;
  }

  /**
   * Sends one message ("READY=1", ...); throws when the socket cannot be used. A name that
   * is no socket address throws once, on the first call, and is ignored after.
   */
  notify(message: string): void {
    if (this.unusableName !== null) {
      const reason = this.unusableName;
      this.unusableName = null;
      throw new Error(reason);
    }
    if (this.address === null) return;
    if (this.libc === null) this.libc = openLibc();
    if (this.fd < 0) {
      this.fd = this.libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (this.fd < 0) throw new Error("cannot open a datagram socket for sd_notify");
    }
    const bytes = new TextEncoder().encode(message);
    const sent = Number(this.libc.sendto(this.fd, ptr(bytes), bytes.length, 0, ptr(this.address), this.addressLength));
    if (sent !== bytes.length) throw new Error(`sd_notify to ${process.env.NOTIFY_SOCKET ?? "?"} failed (sendto returned ${sent})`);
  }

  close(): void {
    if (this.libc !== null && this.fd >= 0) this.libc.close(this.fd);
    this.fd = -1;
  }
}

/** The watchdog interval systemd asked for ($WATCHDOG_USEC, for this process), in ms; null: none. */
export function watchdogIntervalMs(env: Readonly<Record<string, string | undefined>> = process.env): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isSafeInteger(usec) || usec <= 0) return null;
  const pid = env.WATCHDOG_PID;
  if (pid !== undefined && pid !== "" && Number(pid) !== process.pid) return null;
  return Math.max(1, Math.floor(usec / 1000));
}
