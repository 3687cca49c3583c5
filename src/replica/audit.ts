/**
 * Security-relevant events as `warn` log lines an operator can alert on: failed
 * handshakes, refused publishes and subscribes, rate limiting, flooding (muted) and
 * misbehaving peers, suspected leaders. Each line has `audit` (its kind), and where known
 * `key` (ed25519:...), `address` and `reason`.
 *
 * A flood of bad input must not fill the disk: each kind may write AUDIT_LINES_PER_WINDOW
 * lines per AUDIT_WINDOW_MS; past that lines are counted, and one line per kind says how
 * many were left out once the window is over, naming the sources that lost the most. One
 * source (a key, or an address where no key is known) writes at most
 * AUDIT_LINES_PER_SOURCE_PER_WINDOW of them, so one noisy client cannot hide the next
 * client's refusal. The metrics count every event regardless.
 */
import { formatPublicKey } from "../crypto/keys.ts";
import type { Log } from "./log.ts";

export const AUDIT_WINDOW_MS = 10_000;
export const AUDIT_LINES_PER_WINDOW = 20;
/** Of a kind's lines in a window, those one source may write. */
export const AUDIT_LINES_PER_SOURCE_PER_WINDOW = 5;
/** Sources a kind's window keeps count of; past that, new sources share one count (`other`). */
export const AUDIT_SOURCES_PER_WINDOW_MAX = 256;
/** Sources named in the line that says how many lines were left out. */
export const AUDIT_SUMMARY_SOURCES = 3;
/** The source of the sources past AUDIT_SOURCES_PER_WINDOW_MAX, and of a line naming none. */
const OTHER_SOURCE = "other";

export type AuditKind =
  | "handshake-failed"
  | "client-refused"
  | "request-refused"
  | "subscribe-refused"
  | "rate-limited"
  | "client-paused"
  | "reply-dropped"
  | "client-blacklisted"
  | "peer-muted"
  | "peer-misbehaved"
  | "leader-suspected";

export interface AuditFields {
  /** The public key involved (a client's or a peer's). */
  readonly key?: Uint8Array | string;
  readonly address?: string;
  readonly reason: string;
  readonly [extra: string]: unknown;
}

interface Window {
  startedMs: number;
  written: number;
  suppressed: number;
  /** Per source: lines written and left out in this window. */
  readonly sources: Map<string, { written: number; suppressed: number }>;
}

export class AuditLog {
  private readonly windows = new Map<AuditKind, Window>();

  constructor(
    private readonly log: Log,
    private readonly now: () => number = Date.now,
    private readonly linesPerWindow = AUDIT_LINES_PER_WINDOW,
    private readonly windowMs = AUDIT_WINDOW_MS,
  ) {}

  warn(kind: AuditKind, msg: string, fields: AuditFields): void {
    const window = this.windowOf(kind);
    const { key, ...rest } = fields;
    const keyShown = key === undefined ? undefined : keyText(key);
    const source = sourceOf(window, keyShown ?? fields.address ?? OTHER_SOURCE);
    if (window.written >= this.linesPerWindow || source.written >= Math.min(this.linesPerWindow, AUDIT_LINES_PER_SOURCE_PER_WINDOW)) {
      window.suppressed++;
      source.suppressed++;
      return;
    }
    window.written++;
    source.written++;
    this.log.warn(msg, { audit: kind, ...(keyShown === undefined ? {} : { key: keyShown }), ...rest });
  }

  /** Ends the windows that are over: says how many lines each left out. Called on a timer too, so a flood that stopped is reported. */
  flush(): void {
    const now = this.now();
    for (const [kind, window] of this.windows) {
      if (now - window.startedMs < this.windowMs) continue;
      this.report(kind, window);
      this.windows.delete(kind);
    }
  }

  private windowOf(kind: AuditKind): Window {
    const now = this.now();
    let window = this.windows.get(kind);
    if (window !== undefined && now - window.startedMs >= this.windowMs) {
      this.report(kind, window);
      window = undefined;
    }
    if (window === undefined) {
      window = { startedMs: now, written: 0, suppressed: 0, sources: new Map() };
      this.windows.set(kind, window);
    }
    return window;
  }

  private report(kind: AuditKind, window: Window): void {
    if (window.suppressed === 0) return;
    const most = [...window.sources.entries()]
      .filter(([, counts]) => counts.suppressed > 0)
      .sort((a, b) => b[1].suppressed - a[1].suppressed)
      .slice(0, AUDIT_SUMMARY_SOURCES)
      .map(([source, counts]) => ({ source, suppressed: counts.suppressed }));
    this.log.warn("audit lines left out (rate limit)", { audit: kind, suppressed: window.suppressed, windowMs: this.windowMs, most });
  }
}

/** The counts of `name` in the window; past AUDIT_SOURCES_PER_WINDOW_MAX sources, the shared `other` ones. */
function sourceOf(window: Window, name: string): { written: number; suppressed: number } {
  const known = window.sources.get(name);
  if (known !== undefined) return known;
  const shared = window.sources.size >= AUDIT_SOURCES_PER_WINDOW_MAX ? OTHER_SOURCE : name;
  let counts = window.sources.get(shared);
  if (counts === undefined) {
    counts = { written: 0, suppressed: 0 };
    window.sources.set(shared, counts);
  }
  return counts;
}

function keyText(key: Uint8Array | string): string {
  if (typeof key === "string") return /^[0-9a-f]{64}$/.test(key) ? formatPublicKey(Buffer.from(key, "hex")) : key;
  return formatPublicKey(key);
}
