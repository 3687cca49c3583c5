/**
 * The web console (issue 15, items 6 and 7) against real replicas: in headless Chromium
 * (Debian package `chromium`, driven by playwright-core) the printed login URL logs the
 * browser in and leaves no secret in the address bar; the page shows the replicas, the
 * leader, channels and live charts; an event published with `fitb pub` is in the live tail
 * within 2 s of its acknowledgement, with its publisher and the replicas that sent it,
 * counted live (4/4 with every replica up, 3/4 once one is killed); a killed replica turns
 * red; `$sys.events` shows the group's agreed events; with an admin key the page creates a
 * channel; a read-only console offers no changes and refuses them. Without Chromium the
 * browser tests are skipped, saying why; the HTTP checks (login, Host, token, Origin,
 * read-only, loopback) run either way. The server's own bounds (tails, bytes held for a
 * page that does not read) are tested in-process: test/unit/console-server.test.ts.
 *
 * Screenshots are written to test-output/console/ (FITB_TEST_OUTPUT=DIR elsewhere), and
 * their paths printed. FITB_CONSOLE_SCREENSHOT=FILE writes the README's picture.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { BUN, freePortRange, MAIN, REPO, type TestCluster } from "./harness.ts";

const CHROMIUM = Bun.which("chromium") ?? Bun.which("chromium-browser");
/** Where the browser tests leave their screenshots. */
const OUTPUT_DIR = join(process.env.FITB_TEST_OUTPUT ?? join(REPO, "test-output"), "console");

let cluster: TestCluster;
let adminUrl = "";
let readOnlyUrl = "";
let readOnlyPort = 0;
/** The Cookie header of each console's session, from its printed login URL. */
let adminCookie = "";
let readOnlyCookie = "";
/** The read-only console's login URL, used once already (beforeAll). */
let readOnlyLoginUrl = "";
/** A third console, for the browser's own login; its URL unused until then. */
let browserLoginUrl = "";
const consoles: Subprocess[] = [];

/** Starts `fitb console` and returns the login URL it prints. */
async function startConsole(key: string, port: number): Promise<string> {
  const proc = Bun.spawn([BUN, MAIN, "console", "--config", cluster.configPath, "--key", key, "--listen", `127.0.0.1:${port}`], {
    stdout: "pipe",
    stderr: "pipe",
  });
  consoles.push(proc);
  let out = "";
  const reader = (async () => {
    for await (const chunk of proc.stdout) out += new TextDecoder().decode(chunk);
  })();
  await waitFor(
    "the console's URL",
    () => out.includes("http://"),
    20_000,
    () => out,
  );
  void reader;
  return (/http:\/\/\S+/.exec(out) as RegExpExecArray)[0];
}

/** Opens a login URL as a browser would; the session's Cookie header. */
async function logIn(loginUrl: string): Promise<string> {
  const answer = await fetch(loginUrl);
  expect(answer.status).toBe(200);
  return (answer.headers.get("set-cookie") as string).split(";")[0] as string;
}

/** The console's address: the login URL without its secret. */
const addressOf = (loginUrl: string) => loginUrl.replace(/\?login=.*$/, "");

beforeAll(async () => {
  cluster = await startClusterWithChannels();
  const ports = freePortRange(3);
  const adminLoginUrl = await startConsole(cluster.adminKey, ports);
  adminUrl = addressOf(adminLoginUrl);
  adminCookie = await logIn(adminLoginUrl);
  readOnlyPort = ports + 1;
  readOnlyLoginUrl = await startConsole(cluster.clientKey, readOnlyPort);
  readOnlyUrl = addressOf(readOnlyLoginUrl);
  readOnlyCookie = await logIn(readOnlyLoginUrl);
  if (CHROMIUM !== null) browserLoginUrl = await startConsole(cluster.clientKey, ports + 2);
}, 60_000);

afterAll(async () => {
  for (const proc of consoles) proc.kill("SIGKILL");
  await Promise.all(consoles.map((proc) => proc.exited));
  await cluster.stop();
});

describe("fitb console over HTTP", () => {
  test("it prints a URL with a one-time login secret; without its session nothing is served", async () => {
    expect(readOnlyLoginUrl).toMatch(new RegExp(`^http://127\\.0\\.0\\.1:${readOnlyPort}/\\?login=[A-Za-z0-9_-]{43}$`));
    const page = await fetch(readOnlyUrl);
    expect(page.status).toBe(401);
    expect(await page.text()).toContain("/?login=");
    expect((await fetch(`${readOnlyUrl}api/status`)).status).toBe(401);
    expect((await fetch(`${readOnlyUrl}api/tail?tag=sec.alerts`)).status).toBe(401);
    // Used once (beforeAll): whoever reads the console's output later cannot log in with it.
    const again = await fetch(readOnlyLoginUrl);
    expect(again.status).toBe(403);
    expect(await again.text()).toContain("used already");
  }, 30_000);

  test("status JSON: every replica, the channels with rates, the latency", async () => {
    let status: { health: string; replicas: { up: boolean }[]; traffic: { tag: string }[]; latency: object } | null = null;
    await waitFor("4 replicas up in the console's status", async () => {
      status = (await (await fetch(`${readOnlyUrl}api/status`, { headers: { cookie: readOnlyCookie } })).json()) as typeof status;
      return status?.replicas.filter((r) => r.up).length === 4;
    });
    const seen = status as unknown as { health: string; traffic: { tag: string }[]; latency: object };
    expect(seen.traffic.map((c) => c.tag)).toEqual(["net.links", "sec.alerts", "sec.ids", "storage.disks"]);
    expect(Object.keys(seen.latency)).toEqual(["publishAck", "ordering", "storageCommit", "delivery"]);
  }, 30_000);

  test("uPlot is served from the binary, not a CDN", async () => {
    const page = await (await fetch(readOnlyUrl, { headers: { cookie: readOnlyCookie } })).text();
    expect(page).toContain('src="/assets/uPlot.iife.min.js"');
    expect(page).not.toMatch(/https?:\/\//);
    const script = await fetch(`${readOnlyUrl}assets/uPlot.iife.min.js`, { headers: { cookie: readOnlyCookie } });
    expect(script.status).toBe(200);
    expect(await script.text()).toContain("uPlot");
  }, 30_000);

  test("a request naming another host is refused (DNS rebinding), even with the session; a POST needs the page's token", async () => {
    const request = `GET /api/status HTTP/1.1\r\nHost: attacker.example:${readOnlyPort}\r\nCookie: ${readOnlyCookie}\r\nConnection: close\r\n\r\n`;
    expect(await rawRequest(readOnlyPort, request)).toStartWith("HTTP/1.1 403");
    const body = JSON.stringify({ t: "destroy-channel", tag: "net.links" });
    const noSession = await fetch(`${adminUrl}api/admin`, { method: "POST", body });
    expect(noSession.status).toBe(401);
    const noToken = await fetch(`${adminUrl}api/admin`, { method: "POST", headers: { cookie: adminCookie }, body });
    expect(noToken.status).toBe(403);
  }, 30_000);

  test("a POST from another site's page is refused even with the token", async () => {
    const page = await (await fetch(adminUrl, { headers: { cookie: adminCookie } })).text();
    const token = (/"token":"([0-9a-f]+)"/.exec(page) as RegExpExecArray)[1] as string;
    const body = JSON.stringify({ t: "destroy-channel", tag: "net.links" });
    for (const origin of ["http://attacker.example", "null", `http://127.0.0.1:${readOnlyPort}`]) {
      const headers = { cookie: adminCookie, "x-fitb-console-token": token, origin };
      const refused = await fetch(`${adminUrl}api/admin`, { method: "POST", headers, body });
      expect(refused.status).toBe(403);
      expect(((await refused.json()) as { error: string }).error).toBe("cross-origin request refused");
    }
  }, 30_000);

  test("a read-only console refuses changes even with its token", async () => {
    const page = await (await fetch(readOnlyUrl, { headers: { cookie: readOnlyCookie } })).text();
    const token = (/"token":"([0-9a-f]+)"/.exec(page) as RegExpExecArray)[1] as string;
    const refused = await fetch(`${readOnlyUrl}api/admin`, {
      method: "POST",
      headers: { cookie: readOnlyCookie, "x-fitb-console-token": token, origin: readOnlyUrl.slice(0, -1) },
      body: JSON.stringify({ t: "destroy-channel", tag: "net.links" }),
    });
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as { error: string }).error).toContain("read-only");
  }, 30_000);

  test("a --listen beyond loopback needs --allow-remote", async () => {
    const result = await cluster.fitb(["console", "--config", cluster.configPath, "--key", cluster.clientKey, "--listen", "0.0.0.0:7599"]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("needs --allow-remote");
  }, 30_000);
});

describe.skipIf(CHROMIUM === null)("fitb console in headless Chromium", () => {
  // Loaded only when Chromium is there, so a machine without it needs no browser package either.
  let browser: import("playwright-core").Browser;

  beforeAll(async () => {
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({ executablePath: CHROMIUM as string, args: ["--no-sandbox", "--disable-gpu"] });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
  });

  /**
   * A new browser page (its own context) that holds the console's session, as the
   * browser that opened the login URL would; the page is not yet loaded.
   */
  async function sessionPage(url: string, cookie: string, viewport?: { width: number; height: number }) {
    const context = await browser.newContext(viewport === undefined ? {} : { viewport });
    const [name, value] = cookie.split("=") as [string, string];
    await context.addCookies([{ name, value, url, httpOnly: true, sameSite: "Strict" }]);
    return context.newPage();
  }

  test("the printed URL logs the browser in and leaves no secret in the address; another browser gets only the login page", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(browserLoginUrl);
    const address = addressOf(browserLoginUrl);
    await page.waitForURL(address, { timeout: 20_000 });
    await page.locator("#replicas tbody tr").first().waitFor({ timeout: 20_000 });
    expect(page.url()).toBe(address);
    const cookies = await context.cookies();
    expect(cookies).toHaveLength(1);
    expect(cookies[0]).toMatchObject({ httpOnly: true, sameSite: "Strict", path: "/" });
    // The page's script cannot read the session cookie.
    expect(await page.evaluate("document.cookie")).toBe("");
    const other = await browser.newContext();
    const stranger = await other.newPage();
    const refused = await stranger.goto(browserLoginUrl);
    expect(refused?.status()).toBe(403);
    expect(await stranger.textContent("body")).toContain("used already");
    const home = await stranger.goto(address);
    expect(home?.status()).toBe(401);
    expect(await stranger.locator("#replicas").count()).toBe(0);
    await other.close();
    await context.close();
  }, 60_000);

  /** Writes a screenshot of the page to OUTPUT_DIR and says where. */
  async function screenshot(page: import("playwright-core").Page, name: string): Promise<void> {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const path = join(OUTPUT_DIR, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    console.log(`console.test.ts: screenshot ${path}`);
  }

  /** The tail row of the event whose payload is `payload`. */
  const tailRow = (page: import("playwright-core").Page, payload: string) =>
    page.locator("#tail tbody tr", { has: page.locator("td:nth-child(5)", { hasText: new RegExp(`^${payload}$`) }) });

  /** Runs `fitb pub TAG MESSAGE`; resolves with the time its acknowledgement (+OK) was printed. */
  async function fitbPub(tag: string, message: string): Promise<number> {
    const proc = Bun.spawn([BUN, MAIN, "pub", "--config", cluster.configPath, "--key", cluster.clientKey, tag, message], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
    let out = "";
    let ackedAt = 0;
    for await (const chunk of proc.stdout) {
      out += new TextDecoder().decode(chunk);
      if (ackedAt === 0 && out.includes("+OK")) ackedAt = Date.now();
    }
    const code = await proc.exited;
    clearTimeout(timer);
    if (code !== 0 || ackedAt === 0) throw new Error(`fitb pub exited ${code}: ${out}${await new Response(proc.stderr).text()}`);
    return ackedAt;
  }

  test("replicas, leader and two live charts; an event from fitb pub is in the tail within 2 s, sent by 4/4 replicas", async () => {
    const page = await sessionPage(adminUrl, adminCookie, { width: 1280, height: 1000 });
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(error.message));
    await page.goto(adminUrl);
    await page.locator("#replicas tbody tr").nth(3).waitFor({ timeout: 20_000 });
    expect(await page.locator("#replicas tbody tr").count()).toBe(4);
    // "degraded" when a replica of a loaded machine suspected the leader alone (another view).
    expect(["ok", "degraded"]).toContain((await page.textContent("#health")) as string);
    expect(await page.textContent("#summary")).toMatch(/leader [0-3]\b/);
    expect(await page.locator(".uplot canvas").count()).toBe(2);
    await page.click('#channels tr[data-tag="sec.alerts"] button:text("tail")');
    await page.locator("#tail-state", { hasText: /^live/ }).waitFor({ timeout: 20_000 });
    const row = tailRow(page, "disk 1 on db-7 failed");
    const shownAt = row.waitFor({ timeout: 30_000 }).then(() => Date.now());
    const ackedAt = await fitbPub("sec.alerts", "disk 1 on db-7 failed");
    expect((await shownAt) - ackedAt).toBeLessThanOrEqual(2_000);
    const cells = await row.locator("td").allTextContents();
    expect(cells[2]).toBe(`${formatPublicKey(loadSigningKeyFile(cluster.clientKey).key.publicKey).slice(0, 20)}...`);
    // Delivered once 2 replicas sent the same batch; the others' copies are counted as they come.
    await row.locator("td.vouched", { hasText: /^4\/4 replicas$/ }).waitFor({ timeout: 20_000 });
    expect(await row.locator("td.vouched").getAttribute("title")).toBe(
      "replicas 0, 1, 2, 3; delivered once 2 replicas sent the same batch",
    );
    // The charts get a point per refresh: wait for the rate to show the event.
    await page.locator('#channels tr[data-tag="sec.alerts"] td:nth-child(8)', { hasText: /^1$/ }).waitFor({ timeout: 20_000 });
    await screenshot(page, "console-tail");
    const shot = process.env.FITB_CONSOLE_SCREENSHOT;
    if (shot !== undefined) {
      const publisher = clientFor(cluster, cluster.clientKey);
      try {
        for (let i = 2; i <= 3; i++) await publisher.publish("sec.alerts", [encode(`disk ${i} on db-7 failed`)]);
      } finally {
        publisher.close();
      }
      await page.waitForTimeout(4_500);
      await page.screenshot({ path: shot, fullPage: true });
    }
    expect(errors).toEqual([]);
    await page.close();
  }, 90_000);

  test("a replica's $sys health report shows in the tail, sent by that replica alone", async () => {
    const page = await sessionPage(readOnlyUrl, readOnlyCookie);
    await page.goto(readOnlyUrl);
    await page.locator('#replicas tr[data-replica="1"] button:text("health")').click({ timeout: 20_000 });
    const row = page.locator("#tail tbody tr", { hasText: '"kind":"health"' });
    await row.first().waitFor({ timeout: 20_000 });
    const cells = await row.first().locator("td").allTextContents();
    expect(cells[3]).toBe("1/4 replicas");
    expect(cells[4]).toContain('"replica":1');
    await page.close();
  }, 60_000);

  test("with an admin key the page creates a channel; read-only shows no admin controls", async () => {
    const page = await sessionPage(adminUrl, adminCookie);
    await page.goto(adminUrl);
    await page.fill('#create input[name="tag"]', "ops.console");
    await page.selectOption('#create select[name="fault"]', "byzantine");
    await page.selectOption('#create select[name="order"]', "total");
    await page.click('#create button[type="submit"]');
    // The answer, whichever it is: a refusal then fails with its reason, not with a timeout.
    const result = page.locator("#admin-result", { hasText: /^(ok|refused):/ });
    await result.waitFor({ timeout: 20_000 });
    expect(await result.textContent()).toStartWith("ok:");
    await page.locator('#channels tr[data-tag="ops.console"]').waitFor({ timeout: 20_000 });
    await page.close();
    const readOnly = await sessionPage(readOnlyUrl, readOnlyCookie);
    await readOnly.goto(readOnlyUrl);
    await readOnly.locator("#channels tbody tr").first().waitFor({ timeout: 20_000 });
    expect(await readOnly.isVisible("#admin")).toBe(false);
    expect(await readOnly.locator('#channels button:text("destroy")').count()).toBe(0);
    await readOnly.close();
  }, 60_000);

  // Last: it kills a replica.
  test("a killed replica turns red; later events are sent by the 3 left; $sys.events shows the group's peer-down", async () => {
    const page = await sessionPage(readOnlyUrl, readOnlyCookie, { width: 1280, height: 1000 });
    await page.goto(readOnlyUrl);
    await page.locator("#replicas tbody tr").nth(3).waitFor({ timeout: 20_000 });
    const leader = Number((/leader (\d)/.exec((await page.textContent("#summary")) as string) as RegExpExecArray)[1]);
    // Not the leader: the tail goes on without waiting for a view change.
    const victim = leader === 3 ? 2 : 3;
    const events = await sessionPage(readOnlyUrl, readOnlyCookie);
    await events.goto(readOnlyUrl);
    await events.click("#sys-events");
    await events.locator("#tail-state", { hasText: /^live/ }).waitFor({ timeout: 20_000 });
    await page.click('#channels tr[data-tag="sec.alerts"] button:text("tail")');
    await page.locator("#tail-state", { hasText: /^live/ }).waitFor({ timeout: 20_000 });
    await fitbPub("sec.alerts", "before the kill");
    await tailRow(page, "before the kill")
      .locator("td.vouched", { hasText: /^4\/4 replicas$/ })
      .waitFor({ timeout: 20_000 });

    const proc = cluster.procs[victim];
    cluster.kill(victim);
    await proc?.exited;
    const upCell = page.locator(`#replicas tr[data-replica="${victim}"] td:nth-child(3)`);
    await upCell.locator("text=down").waitFor({ timeout: 20_000 });
    // The page's red (#c62828), read in the browser (the test's own types know no DOM).
    const colorOf = (td: unknown) =>
      (globalThis as unknown as { getComputedStyle(el: unknown): { color: string } }).getComputedStyle(td).color;
    expect(await upCell.evaluate(colorOf)).toBe("rgb(198, 40, 40)");
    await screenshot(page, "console-replica-down");

    for (const message of ["after the kill 1", "after the kill 2"]) {
      await fitbPub("sec.alerts", message);
      await tailRow(page, message)
        .locator("td.vouched", { hasText: /^3\/4 replicas$/ })
        .waitFor({ timeout: 20_000 });
    }
    // The second event's copies came after the first's from the same three replicas: the
    // first stays at 3, and the row names who sent it.
    const first = tailRow(page, "after the kill 1").locator("td.vouched");
    expect(await first.textContent()).toBe("3/4 replicas");
    const survivors = [0, 1, 2, 3].filter((id) => id !== victim).join(", ");
    expect(await first.getAttribute("title")).toStartWith(`replicas ${survivors};`);

    // On $sys.events the group's peer-down is one row, delivered once 2 replicas reported
    // it and counted up to the 3 that did.
    const down = events.locator("#tail tbody tr", { hasText: `"kind":"peer-down","peer":${victim},` });
    await down.locator("td.vouched", { hasText: /^3\/4 replicas$/ }).waitFor({ timeout: 30_000 });
    expect(await down.count()).toBe(1);
    await screenshot(events, "console-sys-events");
    await events.close();
    await page.close();
  }, 120_000);
});

if (CHROMIUM === null) {
  test("Chromium is not installed: the browser tests of the console are skipped (apt-get install chromium)", () => {
    console.warn("console.test.ts: no chromium on PATH, so the headless browser tests were skipped (Debian package: chromium)");
  });
}

/** One raw HTTP request (to set a Host header fetch would not send); the answer's text. */
async function rawRequest(port: number, request: string): Promise<string> {
  let answer = "";
  const done = Promise.withResolvers<void>();
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_socket, data) {
        answer += new TextDecoder().decode(data);
      },
      close() {
        done.resolve();
      },
      error() {
        done.resolve();
      },
    },
  });
  socket.write(request);
  const timer = setTimeout(() => done.resolve(), 10_000);
  await done.promise;
  clearTimeout(timer);
  socket.end();
  return answer;
}
