/**
 * A replica's wall clock moved without touching the host's: libfaketime (Debian package
 * libfaketime) preloaded into the replica process. The runtime honours it: Bun reads the
 * wall clock (Date.now, new Date) through the C library's clock_gettime, which the preload
 * replaces, in `bun src/cli/main.ts` and in the compiled dist/fitb alike. The monotonic
 * clock (performance.now, timers) is left alone, as an NTP step leaves it: only the time
 * of day jumps.
 *
 * Each replica reads its offset from a file of its own ("+0", "+600s", "-600s"), re-read
 * every second (FAKETIME_CACHE_DURATION), so a fault moves one running replica's clock and
 * moves it back. Nothing in the shipped binary knows about it.
 */
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";

const LIBRARY_NAME = "libfaketimeMT.so.1";
/** Where Debian puts it, per architecture (x86_64-linux-gnu, aarch64-linux-gnu, ...). */
const LIBRARY_DIRS = ["/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime"];

function findLibrary(): string | null {
  for (const dir of LIBRARY_DIRS) {
    const path = `${dir}/${LIBRARY_NAME}`;
    if (existsSync(path)) return path;
  }
  return null;
}

/**
 * The path of libfaketime's multi-threaded library, installed with apt-get (as .ci/run
 * installs the packages other tests use) when it is missing and this runs as root on
 * Debian; otherwise why it cannot be had.
 */
export function faketimeLibrary(install: boolean): { path: string } | { why: string } {
  const found = findLibrary();
  if (found !== null) return { path: found };
  const canInstall = process.getuid?.() === 0 && spawnSync("apt-get", ["--version"]).status === 0;
  if (!install || !canInstall) {
    return { why: "libfaketime is not installed (Debian: apt-get install libfaketime); the clock-skew rows need it" };
  }
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const apt = (args: string[]) => spawnSync("apt-get", args, { env, stdio: "ignore" }).status === 0;
  if (!apt(["install", "-y", "-qq", "--no-install-recommends", "libfaketime"])) {
    apt(["update", "-qq"]);
    apt(["install", "-y", "-qq", "--no-install-recommends", "libfaketime"]);
  }
  const installed = findLibrary();
  return installed !== null ? { path: installed } : { why: "apt-get install libfaketime failed; the clock-skew rows need it" };
}

/** The environment that puts a process's wall clock at the offset written in `offsetFile`. */
export function skewedClockEnv(library: string, offsetFile: string): Record<string, string> {
  return {
    LD_PRELOAD: library,
    FAKETIME_TIMESTAMP_FILE: offsetFile,
    FAKETIME_CACHE_DURATION: "1",
    FAKETIME_DONT_FAKE_MONOTONIC: "1",
  };
}

/** Sets the offset a skewed process reads within a second: "+0", "+600s", "-600s". */
export function writeOffset(offsetFile: string, offset: string): void {
  writeFileSync(offsetFile, `${offset}\n`);
}
