/**
 * Security-relevant events as `warn` log lines an operator can alert on: failed
 * handshakes, refused publishes and subscribes, rate limiting, flooding (muted) and
 * misbehaving peers, suspected leaders. Each line has `audit` (its kind), and where known
 * `key` (ed25519:...), `address` and `reason`.
 *
 * A flood of bad input must not fill the disk: each kind may write AUDIT_LINES_PER_WINDOW
 * lines per AUDIT_WINDOW_MS; past that lines are counted, and one line per kind says how
 * many were left out once the window is over. The metrics count every event regardless.
 */
import { formatPublicKey } from "../crypto/keys.ts";
import type { Log } from "./log.ts";

export const AUDIT_WINDOW_MS = 10_000;
export const AUDIT_LINES_PER_WINDOW = 20;

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
    if (window.written >= this.linesPerWindow) {
      window.suppressed++;
      return;
    }
    window.written++;
    const { key, ...rest } = fields;
    this.log.warn(msg, { audit: kind, ...(key === undefined ? {} : { key: keyText(key) }), ...rest });
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
      window = { startedMs: now, written: 0, suppressed: 0 };
      this.windows.set(kind, window);
    }
    return window;
  }

  private report(kind: AuditKind, window: Window): void {
    if (window.suppressed === 0) return;
    this.log.warn("audit lines left out (rate limit)", { audit: kind, suppressed: window.suppressed, windowMs: this.windowMs });
  }
}

function keyText(key: Uint8Array | string): string {
  if (typeof key === "string") return /^[0-9a-f]{64}$/.test(key) ? formatPublicKey(Buffer.from(key, "hex")) : key;
  return formatPublicKey(key);
}
