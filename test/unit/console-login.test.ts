// The console's login (src/cli/console/login.ts): the printed URL's secret works once and
// sets a session cookie (HttpOnly, SameSite=Strict, named by the console's port, kept
// across browser restarts for SESSION_MAX_AGE_S); only that cookie's secret is a session.
import { describe, expect, test } from "bun:test";
import { ConsoleLogin, LOGIN_SECRET_BYTES, SESSION_MAX_AGE_S, secretsEqual } from "../../src/cli/console/login.ts";

function sessionOf(setCookie: string): string {
  return setCookie.split(";")[0] as string;
}

describe("console login", () => {
  test("the login secret is 32 random bytes, base64url; it works once", () => {
    const login = new ConsoleLogin(7500);
    expect(Buffer.from(login.printedSecret, "base64url")).toHaveLength(LOGIN_SECRET_BYTES);
    expect(login.printedSecret).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(login.redeem("wrong")).toBeNull();
    expect(login.used).toBe(false);
    const cookie = login.redeem(login.printedSecret) as string;
    expect(cookie).toMatch(/^fitb-console-7500=[A-Za-z0-9_-]{43}; HttpOnly; SameSite=Strict; Path=\/; Max-Age=604800$/);
    // A week: closing the browser does not end the session (the demo's console would need a restart).
    expect(SESSION_MAX_AGE_S).toBe(7 * 24 * 60 * 60);
    expect(login.used).toBe(true);
    expect(login.redeem(login.printedSecret)).toBeNull();
  });

  test("only the session's cookie is a session, beside other cookies; no session before the login", () => {
    const login = new ConsoleLogin(7501);
    expect(login.hasSession("fitb-console-7501=anything")).toBe(false);
    const session = sessionOf(login.redeem(login.printedSecret) as string);
    expect(login.hasSession(session)).toBe(true);
    expect(login.hasSession(`other=1; ${session}; more=2`)).toBe(true);
    expect(login.hasSession(null)).toBe(false);
    expect(login.hasSession("fitb-console-7501=wrong")).toBe(false);
    // Another console's cookie on the same host (cookies ignore the port) is not this one's.
    expect(login.hasSession(session.replace("7501", "7500"))).toBe(false);
    expect(login.hasSession(`fitb-console-7501=wrong; ${session}`)).toBe(true);
  });

  test("secrets compare by value, whatever their lengths", () => {
    expect(secretsEqual("abc", "abc")).toBe(true);
    expect(secretsEqual("abc", "abd")).toBe(false);
    expect(secretsEqual("", "abc")).toBe(false);
    expect(secretsEqual("abcd", "abc")).toBe(false);
  });
});
