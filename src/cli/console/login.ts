/**
 * How the console knows its operator: reaching its port is not enough, since every local
 * account (and with --allow-remote, the network) can. At start the console prints a URL
 * holding a one-time login secret, as Jupyter does; the operator has it because they read
 * the console's own output. Visiting it sets a session cookie (HttpOnly: the page's script
 * cannot read it; SameSite=Strict: another site's page cannot send it) and the URL is
 * replaced by one without the secret. Every other request must carry the cookie.
 *
 * One-time: once used, the login secret is worth nothing, so a copy of the console's output
 * (a journal, a scrollback) read later gives no way in. One browser holds the session; a
 * new one needs a console restart, which prints a new URL.
 *
 * The cookie lasts SESSION_MAX_AGE_S (Max-Age), not just the browser's run: closing the
 * browser would otherwise end the session, and with it the console (for `fitb demo`, the
 * whole demo) would have to be restarted. The session itself lives in the console
 * process's memory and ends with it whatever the cookie says.
 *
 * Cookies are not kept apart by port, so the cookie's name carries the console's port:
 * two consoles on one host (say read-only and admin) each keep their own session.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/** Bytes of randomness in the login secret and in the session secret. */
export const LOGIN_SECRET_BYTES = 32;
/** The login URL's query parameter. */
export const LOGIN_PARAM = "login";
const COOKIE_NAME_PREFIX = "fitb-console-";
/** How long the browser keeps the session cookie: a week of browser restarts. */
export const SESSION_MAX_AGE_S = 7 * 24 * 60 * 60;

export class ConsoleLogin {
  /** The secret of the printed URL, until it is used. */
  private loginSecret: string | null;
  private sessionSecret: string | null = null;
  /** The secret of the printed URL, kept for printing after it is used. */
  readonly printedSecret: string;
  readonly cookieName: string;

  constructor(
    port: number,
    private readonly random: (bytes: number) => Buffer = randomBytes,
  ) {
    this.printedSecret = random(LOGIN_SECRET_BYTES).toString("base64url");
    this.loginSecret = this.printedSecret;
    this.cookieName = `${COOKIE_NAME_PREFIX}${port}`;
  }

  /** Whether the login secret was used already (then only the browser that used it is in). */
  get used(): boolean {
    return this.loginSecret === null;
  }

  /**
   * Takes the login secret: the Set-Cookie value of the new session when `candidate` is
   * the unused login secret, else null. Compared in constant time.
   */
  redeem(candidate: string): string | null {
    if (this.loginSecret === null || !secretsEqual(candidate, this.loginSecret)) return null;
    this.loginSecret = null;
    this.sessionSecret = this.random(LOGIN_SECRET_BYTES).toString("base64url");
    return `${this.cookieName}=${this.sessionSecret}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_MAX_AGE_S}`;
  }

  /** Whether a Cookie header holds this console's session; compared in constant time. */
  hasSession(cookieHeader: string | null): boolean {
    if (this.sessionSecret === null || cookieHeader === null) return false;
    let found = false;
    for (const pair of cookieHeader.split(";")) {
      const at = pair.indexOf("=");
      if (at < 0 || pair.slice(0, at).trim() !== this.cookieName) continue;
      // Every candidate is compared, so the time taken does not say which one matched.
      if (secretsEqual(pair.slice(at + 1).trim(), this.sessionSecret)) found = true;
    }
    return found;
  }
}

/**
 * Whether two secrets are equal, in time that depends on neither: their SHA-256 digests
 * are compared with timingSafeEqual, which needs equal lengths, and hashing first keeps
 * a wrong length from being told apart early.
 */
export function secretsEqual(candidate: string, secret: string): boolean {
  return timingSafeEqual(sha256(candidate), sha256(secret));
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}
