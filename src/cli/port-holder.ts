/**
 * Which process listens on a TCP port, so that "port 7100 is already in use" can name
 * it: on Linux, the listening socket's inode from /proc/net/tcp and tcp6, then the
 * process with that socket among its open files. Only processes of the same user (or
 * every process, for root) can be looked into; otherwise, and on other systems, the
 * answer is null and the message says only that the port is taken.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

/** A listening socket in /proc/net/tcp has state 0A. */
const TCP_LISTEN_STATE = "0A";
/** Processes looked at, at most: the lookup must stay quick on a busy host. */
const PROCESSES_SCANNED_MAX = 100_000;
/** A command line is cut to this many characters in a message. */
const COMMAND_CHARS_MAX = 160;

export interface PortHolder {
  readonly pid: number;
  readonly command: string;
}

/** The process listening on `port` (any local address), or null when it cannot be told. */
export function findPortHolder(port: number): PortHolder | null {
  try {
    const inodes = listeningInodes(port);
    if (inodes.size === 0) return null;
    return processWithSocket(inodes);
  } catch {
    return null;
  }
}

/** " (held by pid 1234: fitb demo --dir ...)", or "" when the holder cannot be told. */
export function portHolderNote(port: number): string {
  const holder = findPortHolder(port);
  return holder === null ? "" : ` (held by pid ${holder.pid}: ${holder.command})`;
}

function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  const portHex = port.toString(16).toUpperCase().padStart(4, "0");
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      const local = fields[1];
      if (local === undefined || fields[3] !== TCP_LISTEN_STATE) continue;
      if (local.slice(local.lastIndexOf(":") + 1) !== portHex) continue;
      const inode = fields[9];
      if (inode !== undefined && inode !== "0") inodes.add(inode);
    }
  }
  return inodes;
}

function processWithSocket(inodes: ReadonlySet<string>): PortHolder | null {
  const wanted = new Set([...inodes].map((inode) => `socket:[${inode}]`));
  const pids = readdirSync("/proc").filter((name) => /^\d+$/.test(name));
  for (const pid of pids.slice(0, PROCESSES_SCANNED_MAX)) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (wanted.has(target)) return { pid: Number(pid), command: commandOf(pid) };
    }
  }
  return null;
}

function commandOf(pid: string): string {
  try {
    const command = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ").replace(/\s+/g, " ");
    return command.length > COMMAND_CHARS_MAX ? `${command.slice(0, COMMAND_CHARS_MAX)}...` : command;
  } catch {
    return "?";
  }
}
