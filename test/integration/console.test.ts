/**
 * The web console (issue 15, items 6 and 7) against real replicas: in headless Chromium
 * (Debian package `chromium`, driven by playwright-core) the page shows the replicas,
 * channels and live charts, tails a channel with each event's publisher and vouch count,
 * and, with an admin key, creates a channel; a read-only console offers no changes and
 * refuses them. Without Chromium the browser tests are skipped, saying why; the HTTP
 * checks (Host, token, read-only, loopback) run either way.
 *
 * FITB_CONSOLE_SCREENSHOT=FILE writes the page as a PNG (the README's picture).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { formatPublicKey, loadSigningKeyFile } from "../../src/crypto/keys.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, encode, startClusterWithChannels } from "./client-util.ts";
import { BUN, freePortRange, MAIN, type TestCluster } from "./harness.ts";

const CHROMIUM = Bun.which("chromium") ?? Bun.which("chromium-browser");

let cluster: TestCluster;
let adminUrl = "";
let readOnlyUrl = "";
let readOnlyPort = 0;
const consoles: Subprocess[] = [];

/** Starts `fitb console` and returns the URL it prints. */
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

beforeAll(async () => {
  cluster = await startClusterWithChannels();
  const ports = freePortRange(2);
  adminUrl = await startConsole(cluster.adminKey, ports);
  readOnlyPort = ports + 1;
  readOnlyUrl = await startConsole(cluster.clientKey, readOnlyPort);
}, 60_000);

afterAll(async () => {
  for (const proc of consoles) proc.kill("SIGKILL");
  await Promise.all(consoles.map((proc) => proc.exited));
  await cluster.stop();
});

describe("fitb console over HTTP", () => {
  test("status JSON: every replica, the channels with rates, the latency", async () => {
    let status: { health: string; replicas: { up: boolean }[]; traffic: { tag: string }[]; latency: object } | null = null;
    await waitFor("4 replicas up in the console's status", async () => {
      status = (await (await fetch(`${readOnlyUrl}api/status`)).json()) as typeof status;
      return status?.replicas.filter((r) => r.up).length === 4;
    });
    const seen = status as unknown as { health: string; traffic: { tag: string }[]; latency: object };
    expect(seen.traffic.map((c) => c.tag)).toEqual(["net.links", "sec.alerts", "sec.ids", "storage.disks"]);
    expect(Object.keys(seen.latency)).toEqual(["publishAck", "ordering", "storageCommit", "delivery"]);
  }, 30_000);

  test("uPlot is served from the binary, not a CDN", async () => {
    const page = await (await fetch(readOnlyUrl)).text();
    expect(page).toContain('src="/assets/uPlot.iife.min.js"');
    expect(page).not.toMatch(/https?:\/\//);
    const script = await fetch(`${readOnlyUrl}assets/uPlot.iife.min.js`);
    expect(script.status).toBe(200);
    expect(await script.text()).toContain("uPlot");
  }, 30_000);

  test("a request naming another host is refused (DNS rebinding), as is a POST without the page's token", async () => {
    const answer = await rawRequest(readOnlyPort, "GET /api/status HTTP/1.1\r\nHost: attacker.example:80\r\nConnection: close\r\n\r\n");
    expect(answer).toStartWith("HTTP/1.1 403");
    const noToken = await fetch(`${adminUrl}api/admin`, {
      method: "POST",
      body: JSON.stringify({ t: "destroy-channel", tag: "net.links" }),
    });
    expect(noToken.status).toBe(403);
  }, 30_000);

  test("a POST from another site's page is refused even with the token", async () => {
    const page = await (await fetch(adminUrl)).text();
    const token = (/"token":"([0-9a-f]+)"/.exec(page) as RegExpExecArray)[1] as string;
    const body = JSON.stringify({ t: "destroy-channel", tag: "net.links" });
    for (const origin of ["http://attacker.example", "null"]) {
      const refused = await fetch(`${adminUrl}api/admin`, { method: "POST", headers: { "x-fitb-console-token": token, origin }, body });
      expect(refused.status).toBe(403);
      expect(((await refused.json()) as { error: string }).error).toBe("cross-origin request refused");
    }
  }, 30_000);

  test("a read-only console refuses changes even with its token", async () => {
    const page = await (await fetch(readOnlyUrl)).text();
    const token = (/"token":"([0-9a-f]+)"/.exec(page) as RegExpExecArray)[1] as string;
    const refused = await fetch(`${readOnlyUrl}api/admin`, {
      method: "POST",
      headers: { "x-fitb-console-token": token },
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

  test("replicas, channels and two live charts; a tail shows new events with publisher and vouch count", async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(error.message));
    await page.goto(adminUrl);
    await page.locator("#replicas tbody tr").nth(3).waitFor({ timeout: 20_000 });
    expect(await page.locator("#replicas tbody tr").count()).toBe(4);
    // "degraded" when a replica of a loaded machine suspected the leader alone (another view).
    expect(["ok", "degraded"]).toContain((await page.textContent("#health")) as string);
    expect(await page.locator(".uplot canvas").count()).toBe(2);
    await page.click('#channels tr[data-tag="sec.alerts"] button:text("tail")');
    await page.locator("#tail-state", { hasText: /^live/ }).waitFor({ timeout: 20_000 });
    const publisher = clientFor(cluster, cluster.clientKey);
    try {
      for (let i = 1; i <= 3; i++) await publisher.publish("sec.alerts", [encode(`disk ${i} on db-7 failed`)]);
    } finally {
      publisher.close();
    }
    const row = page.locator("#tail tbody tr", { hasText: "disk 3 on db-7 failed" });
    await row.waitFor({ timeout: 20_000 });
    const cells = await row.locator("td").allTextContents();
    expect(cells[2]).toBe(`${formatPublicKey(loadSigningKeyFile(cluster.clientKey).key.publicKey).slice(0, 20)}...`);
    expect(cells[3]).toBe("2 of 4 (same batch)");
    // The charts get a point per refresh: wait for the rate to show the events.
    await page.locator('#channels tr[data-tag="sec.alerts"] td:nth-child(8)', { hasText: /^3$/ }).waitFor({ timeout: 20_000 });
    const shot = process.env.FITB_CONSOLE_SCREENSHOT;
    if (shot !== undefined) {
      await page.waitForTimeout(4_500);
      await page.screenshot({ path: shot, fullPage: true });
    }
    expect(errors).toEqual([]);
    await page.close();
  }, 90_000);

  test("a replica's $sys health report shows in the tail", async () => {
    const page = await browser.newPage();
    await page.goto(readOnlyUrl);
    await page.locator('#replicas tr[data-replica="1"] button:text("health")').click({ timeout: 20_000 });
    const row = page.locator("#tail tbody tr", { hasText: '"kind":"health"' });
    await row.first().waitFor({ timeout: 20_000 });
    const cells = await row.first().locator("td").allTextContents();
    expect(cells[3]).toBe("1 of 4 (crash: first copy)");
    expect(cells[4]).toContain('"replica":1');
    await page.close();
  }, 60_000);

  test("with an admin key the page creates a channel; read-only shows no admin controls", async () => {
    const page = await browser.newPage();
    await page.goto(adminUrl);
    await page.fill('#create input[name="tag"]', "ops.console");
    await page.selectOption('#create select[name="fault"]', "byzantine");
    await page.selectOption('#create select[name="order"]', "total");
    await page.click('#create button[type="submit"]');
    await page.locator("#admin-result", { hasText: /^ok:/ }).waitFor({ timeout: 20_000 });
    await page.locator('#channels tr[data-tag="ops.console"]').waitFor({ timeout: 20_000 });
    await page.close();
    const readOnly = await browser.newPage();
    await readOnly.goto(readOnlyUrl);
    await readOnly.locator("#channels tbody tr").first().waitFor({ timeout: 20_000 });
    expect(await readOnly.isVisible("#admin")).toBe(false);
    expect(await readOnly.locator('#channels button:text("destroy")').count()).toBe(0);
    await readOnly.close();
  }, 60_000);
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
