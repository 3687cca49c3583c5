/**
 * A byte string where a map belongs (wire/schemas.ts isMap): zod takes a Uint8Array for an
 * object and a strict object schema walks every byte of it as an unrecognized key, which
 * held a replica's event loop for 3.5 s per 4 MiB frame and built a reason of megabytes.
 * Every frame payload, request body and nested map is now refused at once; the length of
 * the reason is what shows the walk did not happen (it listed every byte).
 */
import { describe, expect, test } from "bun:test";
import { parseMembers, parseMembersWithStart, parseQuotas } from "../../src/client/queries.ts";
import { CanonicalError, decodeCanonical, encodeCanonical } from "../../wire/canonical.ts";
import { decodeFrameBody, decodeRequestBody, eventsSchema } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";

/** A byte string of this size: its indices, listed, made a reason of megabytes. */
const BYTES = new Uint8Array(256 * 1024);

const FRAME_TYPES = Object.entries(FrameType).filter(([, code]) => typeof code === "number") as [string, number][];

describe("a byte string where a map belongs", () => {
  test.each(FRAME_TYPES)("as the whole payload of %s: refused as not a map, with a short reason", (_name, code) => {
    const result = decodeFrameBody(code, encodeCanonical(BYTES));
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.error.kind).toBe("schema");
    expect(result.error.reason).toEndWith("(payload): expected a map");
  });

  test("as a request body: refused as not a map", () => {
    const result = decodeRequestBody(encodeCanonical(BYTES));
    expect(result.ok ? "ok" : result.error.reason).toBe("request body: (payload): expected a map");
  });

  test("as an EVENTS frame's req: refused as not a map, by the schema of either form", () => {
    const single = eventsSchema.safeParse({ sub: 1, tag: "a.b", seq: 1, req: BYTES, replica: 0 });
    expect(single.success ? [] : single.error.issues.map((issue) => `${issue.path.join(".")}: ${issue.message}`)).toEqual([
      "req: expected a map",
    ]);
    const shared = decodeFrameBody(FrameType.EVENTS, encodeCanonical({ subs: [1, 2], tag: "a.b", seq: 1, req: BYTES, replica: 0 }));
    expect(shared.ok).toBe(false);
  });

  test("as a replica HELLO's cfg: refused as not a map", () => {
    const hello = {
      v: 4,
      role: "replica",
      replica: 1,
      key: new Uint8Array(32),
      nonce: new Uint8Array(32),
      eph: new Uint8Array(32),
      cfg: BYTES,
    };
    const result = decodeFrameBody(FrameType.HELLO, encodeCanonical(hello));
    expect(result.ok ? "ok" : result.error.reason).toBe("HELLO: cfg: expected a map");
  });

  test("in a replica's answers to members and quotas queries (what a client reads): refused", () => {
    const group = { epoch: 0, f: 1, members: [BYTES], digest: new Uint8Array(32) };
    expect(parseMembers(BYTES)).toBeNull();
    expect(parseMembers({ ...group, pending: null })).toBeNull();
    expect(parseMembers({ ...group, members: [{ id: 0, host: "h", port: 1, key: new Uint8Array(32) }], pending: BYTES })).toBeNull();
    expect(parseMembersWithStart(BYTES)).toBeNull();
    expect(parseQuotas(BYTES)).toBeNull();
    expect(parseQuotas({ quotas: [BYTES] })).toBeNull();
  });
});

describe("a container longer than the caller allows", () => {
  test("an array or map header past itemsMax is refused at the header, before anything is read or made for it", () => {
    // An array of 1,000 one-byte items, and a map of 1,000 entries, with room for 10 values.
    const array = encodeCanonical(Array.from({ length: 1000 }, () => 0));
    const map = encodeCanonical(Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${String(i).padStart(4, "0")}`, 0])));
    for (const bytes of [array, map]) {
      let error: unknown = null;
      try {
        decodeCanonical(bytes, 10);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(CanonicalError);
      expect((error as CanonicalError).code).toBe("items-exceeded");
      expect((error as CanonicalError).offset).toBe(0);
    }
  });
});
