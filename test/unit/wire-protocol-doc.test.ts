// PROTOCOL.md must say what the code does: every frame type with its number, every error
// and SUB_END code, every domain tag and the numeric bounds appear in it.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  CANONICAL_DEPTH_MAX,
  DOMAIN_PEER_KEY_I2R,
  DOMAIN_PEER_KEY_R2I,
  DOMAIN_CLIENT_KEY_I2R,
  DOMAIN_CLIENT_KEY_R2I,
  DOMAIN_CLIENT_MAC,
  DOMAIN_REQUEST_DIGEST,
  DOMAIN_PEER_MAC,
  DOMAIN_REQUEST,
  DOMAIN_SESSION_INITIATOR,
  DOMAIN_SESSION_RESPONDER,
  ERROR_CODES,
  EVENT_BYTES_MAX,
  FRAME_BYTES_MAX,
  FrameType,
  QUERY_KINDS,
  REASON_BYTES_MAX,
  RELAY_LINE_BYTES_MAX,
  REQUEST_EVENTS_MAX,
  SUB_END_CODES,
  TAG_BYTES_MAX,
} from "../../wire/index.ts";

const doc = readFileSync(join(import.meta.dir, "..", "..", "wire", "PROTOCOL.md"), "utf8");
const hexType = (n: number): string => `0x${n.toString(16).padStart(2, "0")}`;

describe("PROTOCOL.md matches the code", () => {
  test("frame type table rows: | 0xNN | NAME |", () => {
    for (const [name, code] of Object.entries(FrameType)) expect(doc).toContain(`| ${hexType(code)} | ${name} |`);
  });

  test("every payload section names its frame and number", () => {
    for (const [name, code] of Object.entries(FrameType)) expect(doc).toContain(`${name} (${hexType(code)})`);
  });

  test("error codes, SUB_END codes and query kinds", () => {
    for (const code of ERROR_CODES) expect(doc).toContain(`| \`${code}\` |`);
    for (const code of SUB_END_CODES) expect(doc).toContain(`| \`${code}\` |`);
    for (const q of QUERY_KINDS) expect(doc).toContain(`| \`"${q}"\` |`);
  });

  test("domain tags", () => {
    for (const d of [
      DOMAIN_REQUEST,
      DOMAIN_REQUEST_DIGEST,
      DOMAIN_SESSION_RESPONDER,
      DOMAIN_SESSION_INITIATOR,
      DOMAIN_PEER_KEY_I2R,
      DOMAIN_PEER_KEY_R2I,
      DOMAIN_PEER_MAC,
      DOMAIN_CLIENT_KEY_I2R,
      DOMAIN_CLIENT_KEY_R2I,
      DOMAIN_CLIENT_MAC,
    ]) {
      expect(doc).toContain(`| \`${d}\` |`);
    }
  });

  test("bounds", () => {
    const fmt = (n: number) => n.toLocaleString("en-US");
    expect(doc).toContain(`\`FRAME_BYTES_MAX\` = 4 MiB (${fmt(FRAME_BYTES_MAX)})`);
    expect(doc).toContain(`\`RELAY_LINE_BYTES_MAX\` = ${fmt(RELAY_LINE_BYTES_MAX)}`);
    expect(doc).toContain(`\`EVENT_BYTES_MAX\` = ${fmt(EVENT_BYTES_MAX)}`);
    expect(doc).toContain(`1 .. ${fmt(REQUEST_EVENTS_MAX)} (\`REQUEST_EVENTS_MAX\`)`);
    expect(doc).toContain(`\`REASON_BYTES_MAX\` = ${REASON_BYTES_MAX}`);
    expect(doc).toContain(`at most ${TAG_BYTES_MAX} bytes`);
    expect(doc).toContain(`at most ${CANONICAL_DEPTH_MAX} arrays/maps deep`);
  });
});

describe("PROTOCOL.md states the replica's ingress bounds as the code sets them", () => {
  test("verification budgets, blacklist periods, peer budgets and mutes", async () => {
    const admission = await import("../../src/replica/admission.ts");
    const inbox = await import("../../src/replica/peer-inbox.ts");
    const n = (x: number): string => x.toLocaleString("en-US");
    const text = doc.replace(/\s+/g, " ");
    expect(text).toContain(`\`KEY_VERIFICATIONS_PER_SECOND_MAX\` = ${n(admission.KEY_VERIFICATIONS_PER_SECOND_MAX)} a second`);
    expect(text).toContain(`\`ADDRESS_VERIFICATIONS_PER_SECOND_MAX\` = ${n(admission.ADDRESS_VERIFICATIONS_PER_SECOND_MAX)})`);
    expect(text).toContain(`\`ADDRESS_BLACKLIST_MS\` = ${n(admission.ADDRESS_BLACKLIST_MS)} ms`);
    expect(text).toContain(`\`KEY_BLACKLIST_MS\` = ${n(admission.KEY_BLACKLIST_MS)} ms`);
    const server = await import("../../src/replica/server.ts");
    expect(text).toContain(`\`BLACKLIST_NOTICE_MS\` = ${n(server.BLACKLIST_NOTICE_MS)} ms`);
    const tarpit = await import("../../src/replica/tarpit.ts");
    expect(text).toContain(`\`TARPIT_PER_ADDRESS_MAX\` = ${n(tarpit.TARPIT_PER_ADDRESS_MAX)} per address`);
    expect(text).toContain(`\`TARPIT_CONNECTIONS_MAX\` = ${n(tarpit.TARPIT_CONNECTIONS_MAX)} in all`);
    expect(text).toContain(`\`TARPIT_HOLD_MS_MAX\` = ${n(tarpit.TARPIT_HOLD_MS_MAX)} ms`);
    expect(text).toContain(`faster than ${n(admission.REFUSALS_PER_SECOND)} a second, past a burst of ${n(admission.REFUSALS_BURST)}`);
    expect(text).toContain(`\`PEER_BYTES_PER_SECOND_MAX\` = ${inbox.PEER_BYTES_PER_SECOND_MAX / (1024 * 1024)} MiB`);
    expect(text).toContain(`\`PEER_MESSAGES_PER_SECOND_MAX\` = ${n(inbox.PEER_MESSAGES_PER_SECOND_MAX)} messages`);
    expect(text).toContain(`\`PEER_MUTE_MS\` = ${n(inbox.PEER_MUTE_MS)} ms`);
    expect(text).toContain(`\`PEER_MUTE_MS_MAX\` = ${n(inbox.PEER_MUTE_MS_MAX)} ms`);
    expect(text).toContain(`\`PEER_FLOOD_MUTE_MS\` = ${n(inbox.PEER_FLOOD_MUTE_MS)} ms`);
  });
});
