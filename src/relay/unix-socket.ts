/**
 * The relay's Unix socket: the listener probes should use. A web page in a browser on
 * the probe host can reach a loopback TCP port (a cross-protocol POST) but not a Unix
 * socket, and the socket's mode 0600 admits only the relay's own user, where a loopback
 * port admits every user of the host.
 *
 * The socket is created with a umask that leaves it 0600 from the first moment (no
 * window between bind and chmod). A socket file left behind by a relay that was killed
 * is replaced; one that a running relay still answers on is not.
 */
import { lstatSync, statSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { dirname, join } from "node:path";

/** The socket path cannot be used (in use, not a socket, unreadable). */
export class SocketPathError extends Error {
  override name = "SocketPathError";
}

/** The socket's file mode: the relay's user only. */
export const RELAY_SOCKET_MODE = 0o600;
/** The file name inside a runtime directory. */
export const RELAY_SOCKET_NAME = "relay.sock";
/** Longest path a Unix socket address holds on Linux (sun_path, less its NUL). */
export const UNIX_SOCKET_PATH_BYTES_MAX = 107;

/**
 * Where the relay listens by default: the runtime directory systemd made for the unit
 * (RuntimeDirectory=, given as $RUNTIME_DIRECTORY), else the user's ($XDG_RUNTIME_DIR);
 * null when neither exists, and then only the TCP port is offered.
 */
export function defaultRelaySocketPath(env: Record<string, string | undefined> = process.env): string | null {
  const systemd = env["RUNTIME_DIRECTORY"]?.split(":")[0];
  if (systemd !== undefined && systemd !== "") return join(systemd, RELAY_SOCKET_NAME);
  const user = env["XDG_RUNTIME_DIR"];
  if (user !== undefined && user !== "") return join(user, `fitb-${RELAY_SOCKET_NAME}`);
  return null;
}

/** Why `path` cannot be used for the socket, or null. */
export function socketPathProblem(path: string): string | null {
  if (path === "") return "the socket path is empty";
  if (Buffer.byteLength(path) > UNIX_SOCKET_PATH_BYTES_MAX) {
    return `${path} is ${Buffer.byteLength(path)} bytes; a Unix socket path holds at most ${UNIX_SOCKET_PATH_BYTES_MAX}`;
  }
  const dir = dirname(path);
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return `${dir} does not exist: make the directory for the socket ${path} first`;
    return `cannot use ${dir} for the socket ${path}: ${(error as Error).message}`;
  }
  if (!isDir) return `${dir} is not a directory, so ${path} cannot be made there`;
  return null;
}

/**
 * Makes `path` free for a new socket: nothing there, or a socket nobody answers on (a
 * relay that was killed), which is removed. Throws with the reason otherwise.
 */
export async function clearStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new SocketPathError(`cannot use ${path}: ${(error as Error).message}`);
  }
  if (!isSocket) throw new SocketPathError(`${path} exists and is not a socket; remove it or choose another --socket`);
  if (await answers(path)) throw new SocketPathError(`${path} is in use (another relay is listening there)`);
  unlinkSync(path);
}

/** Runs `listen` with a umask that makes the socket it creates RELAY_SOCKET_MODE. */
export function withSocketUmask<T>(listen: () => T): T {
  const previous = process.umask(0o777 & ~RELAY_SOCKET_MODE);
  try {
    return listen();
  } finally {
    process.umask(previous);
  }
}

/** Removes the socket file at stop (best effort: the directory may be gone already). */
export function removeSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // Nothing to remove.
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
