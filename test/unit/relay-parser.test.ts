// The relay's line parser (wire/PROTOCOL.md section 11.1 and 11.2): every line form,
// every refusal, the bounds, and the same results however the stream is split: whole,
// one byte at a time, and at seeded random split points.
import { describe, expect, test } from "bun:test";
import { EVENT_BYTES_MAX, RELAY_LINE_BYTES_MAX } from "../../wire/types.ts";
import { INPUT_ENDED_INSIDE_COMMAND, RelayLineParser, type RelayInput } from "../../src/relay/parser.ts";

const enc = new TextEncoder();
const bytes = (text: string): Uint8Array => enc.encode(text);

function concat(...parts: (string | Uint8Array)[]): Uint8Array {
  const arrays = parts.map((part) => (typeof part === "string" ? bytes(part) : part));
  const out = new Uint8Array(arrays.reduce((sum, part) => sum + part.byteLength, 0));
  let at = 0;
  for (const part of arrays) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/** Feeds `stream` in pieces cut at `cuts` (sorted offsets) and collects everything. */
function parseSplit(stream: Uint8Array, cuts: readonly number[], parser = new RelayLineParser()): RelayInput[] {
  const out: RelayInput[] = [];
  let from = 0;
  for (const cut of [...cuts, stream.byteLength]) {
    // A copy per piece, then scribbled over: the parser must not keep the caller's memory.
    const piece = stream.slice(from, cut);
    out.push(...parser.push(piece));
    piece.fill(0x58);
    from = cut;
  }
  return out;
}

const parseWhole = (stream: Uint8Array, parser?: RelayLineParser): RelayInput[] => parseSplit(stream, [], parser);

function parseByteByByte(stream: Uint8Array): RelayInput[] {
  return parseSplit(
    stream,
    Array.from({ length: Math.max(0, stream.byteLength - 1) }, (_, i) => i + 1),
  );
}

/** xorshift32: a seeded generator, so a failing split pattern can be replayed. */
function prng(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 0x1_0000_0000;
  };
}

function randomCuts(length: number, random: () => number): number[] {
  const count = Math.floor(random() * Math.min(length, 40));
  const cuts = new Set<number>();
  for (let i = 0; i < count; i++) cuts.add(1 + Math.floor(random() * Math.max(1, length - 1)));
  return [...cuts].sort((a, b) => a - b);
}

/** Makes inputs comparable with toEqual (payload bytes as arrays). */
function plain(inputs: readonly RelayInput[]): unknown[] {
  return inputs.map((input) => {
    if (input.t === "command" && input.command.t === "pub")
      return { ...input, command: { ...input.command, payload: [...input.command.payload] } };
    return input;
  });
}

const pub = (tag: string, payload: string | Uint8Array, form: "PUB" | "PUBB" = "PUB"): unknown => ({
  t: "command",
  command: { t: "pub", tag, payload: [...(typeof payload === "string" ? bytes(payload) : payload)], form },
});
const cmd = (command: object): unknown => ({ t: "command", command });
const refusedWith = (code: string): unknown => expect.objectContaining({ t: "refused", code });

/** A stream with every line form, refusals among them, and the payloads that need care. */
const CORPUS = concat(
  "PUB net.links eth0 down\n",
  "pub net.links  two  spaces kept \r\n",
  "PUB net.links\n",
  "PUB net.links \n",
  "\n\r\n",
  "PUBB storage.disks 7\n",
  new Uint8Array([0x00, 0x0a, 0x0d, 0xff, 0x20, 0x0a, 0x41]),
  "\n",
  "PubB sec.ids 0\n",
  "SUB sec.alerts\n",
  "SUB sec.alerts 42\r\n",
  "UNSUB sec.alerts\n",
  "PING\n",
  "ping\r\n",
  "PUB Bad.Tag x\n",
  "SUB sec.alerts 007\n",
  "QUIT\n",
  // Not a relay command: the stream ends here, and the PUB after it is never read.
  "NOPE x\n",
  "PUB net.links never read\n",
);

const CORPUS_EXPECTED = [
  pub("net.links", "eth0 down"),
  pub("net.links", " two  spaces kept "),
  pub("net.links", ""),
  pub("net.links", ""),
  pub("storage.disks", new Uint8Array([0x00, 0x0a, 0x0d, 0xff, 0x20, 0x0a, 0x41]), "PUBB"),
  pub("sec.ids", "", "PUBB"),
  cmd({ t: "sub", tag: "sec.alerts", from: null }),
  cmd({ t: "sub", tag: "sec.alerts", from: 42 }),
  cmd({ t: "unsub", tag: "sec.alerts" }),
  cmd({ t: "ping" }),
  cmd({ t: "ping" }),
  refusedWith("BAD_REQUEST"),
  refusedWith("BAD_REQUEST"),
  cmd({ t: "quit" }),
  expect.objectContaining({ t: "refused", code: "BAD_REQUEST", closes: true }),
];

describe("relay line parser: the same results however the stream is split", () => {
  test("the corpus, whole", () => {
    expect(plain(parseWhole(CORPUS))).toEqual(CORPUS_EXPECTED);
  });

  test("the corpus, one byte at a time", () => {
    expect(plain(parseByteByByte(CORPUS))).toEqual(CORPUS_EXPECTED);
  });

  test("the corpus, at 300 seeded random split points patterns", () => {
    for (let seed = 1; seed <= 300; seed++) {
      const cuts = randomCuts(CORPUS.byteLength, prng(seed));
      const result = plain(parseSplit(CORPUS, cuts));
      if (JSON.stringify(result) !== JSON.stringify(plain(parseWhole(CORPUS))))
        throw new Error(`seed ${seed} (cuts ${cuts.join(",")}) differs`);
    }
    expect(plain(parseSplit(CORPUS, randomCuts(CORPUS.byteLength, prng(7))))).toEqual(CORPUS_EXPECTED);
  });

  test("random bytes never throw, give the same results split anywhere, and stay within the line bound", () => {
    const random = prng(99);
    const alphabet = bytes("PUBSUNQIT pubb net.links 0123456789\r\n\n\n  ");
    for (let round = 0; round < 200; round++) {
      const length = 1 + Math.floor(random() * 400);
      const stream = new Uint8Array(length);
      for (let i = 0; i < length; i++)
        stream[i] = random() < 0.9 ? (alphabet[Math.floor(random() * alphabet.byteLength)] as number) : Math.floor(random() * 256);
      const small = (): RelayLineParser => new RelayLineParser({ lineBytesMax: 32, payloadBytesMax: 16 });
      const whole = JSON.stringify(plain(parseWhole(stream, small())));
      const parser = small();
      const split = JSON.stringify(plain(parseSplit(stream, randomCuts(length, random), parser)));
      expect(split).toBe(whole);
      expect(parser.bufferedBytes).toBeLessThanOrEqual(32);
    }
  });
});

describe("relay line parser: lines", () => {
  test("LF and CRLF both end a line; exactly one CR before the LF is removed", () => {
    expect(plain(parseWhole(bytes("PUB t a\r\nPUB t b\nPUB t c\r\r\n")))).toEqual([pub("t", "a"), pub("t", "b"), pub("t", "c\r")]);
  });

  test("empty lines are ignored", () => {
    expect(parseWhole(bytes("\n\r\n\n"))).toEqual([]);
  });

  test("command words match without regard to case", () => {
    expect(plain(parseWhole(bytes("Pub t x\npInG\nqUiT\nsub t\nUnSub t\n")))).toEqual([
      pub("t", "x"),
      cmd({ t: "ping" }),
      cmd({ t: "quit" }),
      cmd({ t: "sub", tag: "t", from: null }),
      cmd({ t: "unsub", tag: "t" }),
    ]);
  });

  test("a PUB payload keeps every byte but the terminator, UTF-8 or not", () => {
    const payload = new Uint8Array([0x63, 0x61, 0x66, 0xc3, 0xa9, 0x20, 0xff, 0xfe, 0x09, 0x00, 0x0d, 0x41]);
    expect(plain(parseWhole(concat("PUB net.links ", payload, "\n")))).toEqual([pub("net.links", payload)]);
  });

  test("a line of exactly RELAY_LINE_BYTES_MAX bytes, LF included, is accepted", () => {
    const head = "PUB t ";
    const payload = "x".repeat(RELAY_LINE_BYTES_MAX - head.length - 1);
    const result = parseWhole(bytes(`${head}${payload}\n`));
    expect(result).toHaveLength(1);
    expect(result[0]?.t === "command" && result[0].command.t === "pub" && result[0].command.payload.byteLength).toBe(payload.length);
  });

  test("a CRLF line of exactly RELAY_LINE_BYTES_MAX bytes is accepted", () => {
    const head = "PUB t ";
    const payload = "y".repeat(RELAY_LINE_BYTES_MAX - head.length - 2);
    const result = parseWhole(bytes(`${head}${payload}\r\n`));
    expect(result[0]?.t === "command" && result[0].command.t === "pub" && result[0].command.payload.byteLength).toBe(payload.length);
  });

  test("one byte more is refused with TOO_LARGE, and the next line is read", () => {
    const line = `PUB t ${"x".repeat(RELAY_LINE_BYTES_MAX - 6)}\n`;
    expect(bytes(line).byteLength).toBe(RELAY_LINE_BYTES_MAX + 1);
    const result = plain(parseWhole(bytes(`${line}PING\n`)));
    expect(result).toEqual([
      {
        t: "refused",
        code: "TOO_LARGE",
        reason: `line exceeds ${RELAY_LINE_BYTES_MAX} bytes (the command and tag count too: PUBB TAG N then N bytes carries an event of up to event_bytes_max)`,
      },
      cmd({ t: "ping" }),
    ]);
  });

  test("an oversized line is refused as soon as it is certain, once, without being stored", () => {
    const parser = new RelayLineParser();
    // RELAY_LINE_BYTES_MAX - 1 bytes may still end with their LF within the bound...
    const first = parser.push(bytes("PUB t ".padEnd(RELAY_LINE_BYTES_MAX - 1, "z")));
    expect(first).toEqual([]);
    expect(parser.bufferedBytes).toBe(RELAY_LINE_BYTES_MAX - 1);
    // ...one more byte that is not the LF cannot.
    const second = parser.push(bytes("z"));
    expect(plain(second)).toEqual([refusedWith("TOO_LARGE")]);
    for (let i = 0; i < 20; i++) expect(parser.push(new Uint8Array(100_000).fill(0x7a))).toEqual([]);
    expect(parser.bufferedBytes).toBe(0);
    expect(plain(parser.push(bytes("still the long line\nPING\n")))).toEqual([cmd({ t: "ping" })]);
  });

  test("finish() refuses an unfinished line: a cut-off command is never run, and the answer says so", () => {
    const parser = new RelayLineParser();
    expect(parser.push(bytes("PING\nPUB net.links half an ev"))).toHaveLength(1);
    expect(parser.inMiddle).toBe(true);
    expect(parser.finish()).toEqual([{ t: "refused", code: "BAD_REQUEST", reason: INPUT_ENDED_INSIDE_COMMAND }]);
    expect(INPUT_ENDED_INSIDE_COMMAND).toBe("input ended inside a command; not run");
    expect(parser.inMiddle).toBe(false);
    expect(plain(parser.push(bytes("PING\n")))).toEqual([cmd({ t: "ping" })]);
  });

  test("finish() refuses a PUBB whose payload did not all arrive, split anywhere", () => {
    const stream = bytes("PUBB net.links 10\nhalf");
    for (let cut = 1; cut < stream.byteLength; cut++) {
      const parser = new RelayLineParser();
      expect(parseSplit(stream, [cut], parser)).toEqual([]);
      expect(parser.finish()).toEqual([{ t: "refused", code: "BAD_REQUEST", reason: INPUT_ENDED_INSIDE_COMMAND }]);
    }
  });

  test("finish() after complete lines, an empty line's CR, an oversized line or payload already refused, or a closing line: nothing", () => {
    const cases: [string | Uint8Array, number][] = [
      ["PING\n", 1],
      ["PING\n\r", 1],
      ["", 0],
      [`PUB t ${"z".repeat(RELAY_LINE_BYTES_MAX)}`, 1],
      [`PUBB t ${EVENT_BYTES_MAX + 1}\nonly part of it`, 1],
      ["PUBB t 3\nabc", 1],
      ["HELLO\nPUB t cut", 1],
    ];
    for (const [stream, results] of cases) {
      const parser = new RelayLineParser();
      expect(parseWhole(typeof stream === "string" ? bytes(stream) : stream, parser)).toHaveLength(results);
      expect(parser.finish()).toEqual([]);
    }
  });

  test("unknown commands and non-ASCII command words are BAD_REQUEST, and close the stream", () => {
    for (const line of [bytes("HELLO\n"), new Uint8Array([0xc3, 0xa9, 0x0a]), bytes("PUBLISH t x\n"), bytes(`${"A".repeat(100)}\n`)]) {
      const parser = new RelayLineParser();
      const result = parser.push(concat(line, "PING\n"));
      expect(result.map((input) => (input.t === "refused" ? [input.code, input.closes] : input.t))).toEqual([["BAD_REQUEST", true]]);
      expect(parser.closed).toBe(true);
      expect(parser.push(bytes("PUB t x\n"))).toEqual([]);
    }
  });

  test("a browser's POST is refused at its first line: the PUB lines of its body are never read", () => {
    const post = [
      "POST / HTTP/1.1",
      "Host: 127.0.0.1:7400",
      "Content-Type: text/plain",
      "Content-Length: 27",
      "",
      "PUB sec.alerts all is well",
      "",
    ].join("\r\n");
    for (const split of [1, 7, 64, post.length]) {
      const parser = new RelayLineParser();
      const out = [];
      const all = bytes(post);
      for (let at = 0; at < all.byteLength; at += split) out.push(...parser.push(all.subarray(at, at + split)));
      expect(out.length).toBe(1);
      expect(out[0]?.t === "refused" && out[0].closes).toBe(true);
    }
  });

  test("commands before the unknown line still run", () => {
    const parser = new RelayLineParser();
    const out = parser.push(bytes("PING\nGET / HTTP/1.1\nPING\n"));
    expect(out.map((input) => input.t)).toEqual(["command", "refused"]);
  });

  test("reasons shown back are printable ASCII, quoted and short, whatever the input", () => {
    const hostile = concat("\u001b[2J", new Uint8Array([0x00, 0x07, 0xff]), "x".repeat(500), "\n");
    const [input] = parseWhole(hostile);
    expect(input?.t).toBe("refused");
    const reason = input?.t === "refused" ? input.reason : "";
    expect(reason).toMatch(/^[\x20-\x7e]+$/);
    expect(reason.length).toBeLessThan(200);
  });
});

describe("relay line parser: PUB", () => {
  test("PUB without a tag, with an empty tag, or with a bad tag is BAD_REQUEST", () => {
    const result = parseWhole(bytes(`PUB\nPUB  x\nPUB Net.links x\nPUB net..links x\nPUB ${"a".repeat(129)} x\n`));
    expect(result.every((input) => input.t === "refused" && input.code === "BAD_REQUEST")).toBe(true);
    expect(result).toHaveLength(5);
  });

  test("a tag of exactly 128 bytes is accepted", () => {
    const tag = `${"a".repeat(63)}.${"b".repeat(64)}`;
    expect(plain(parseWhole(bytes(`PUB ${tag} x\n`)))).toEqual([pub(tag, "x")]);
  });
});

describe("relay line parser: PUBB", () => {
  test("takes exactly n bytes of any value, then reads lines again (a trailing newline is an empty line)", () => {
    const payload = new Uint8Array([0x0a, 0x0a, 0x0d, 0x0a, 0x00, 0xff]);
    expect(plain(parseWhole(concat("PUBB t 6\n", payload, "\nPING\n")))).toEqual([pub("t", payload, "PUBB"), cmd({ t: "ping" })]);
  });

  test("the payload may be followed directly by the next command", () => {
    expect(plain(parseWhole(bytes("PUBB t 3\nabcPUB t d\n")))).toEqual([pub("t", "abc", "PUBB"), pub("t", "d")]);
  });

  test("n above the payload bound: TOO_LARGE at once, and the n bytes are read and dropped", () => {
    const parser = new RelayLineParser({ payloadBytesMax: 10 });
    const result = plain(parseWhole(concat("PUBB t 11\n", "PING\nPING\n+", "\nPING\n"), parser));
    expect(result).toEqual([{ t: "refused", code: "TOO_LARGE", reason: "payload of 11 bytes; at most 10" }, cmd({ t: "ping" })]);
  });

  test("n above EVENT_BYTES_MAX is skipped as it streams, never stored", () => {
    const parser = new RelayLineParser();
    const n = EVENT_BYTES_MAX + 1;
    expect(plain(parser.push(bytes(`PUBB t ${n}\n`)))).toEqual([refusedWith("TOO_LARGE")]);
    const chunk = new Uint8Array(64 * 1024).fill(0x0a);
    let left = n;
    while (left > chunk.byteLength) {
      expect(parser.push(chunk)).toEqual([]);
      expect(parser.bufferedBytes).toBe(0);
      left -= chunk.byteLength;
    }
    expect(plain(parser.push(concat(new Uint8Array(left), "PING\n")))).toEqual([cmd({ t: "ping" })]);
  });

  test("n = EVENT_BYTES_MAX is accepted", () => {
    const payload = new Uint8Array(EVENT_BYTES_MAX).fill(0x61);
    const result = parseWhole(concat(`PUBB t ${EVENT_BYTES_MAX}\n`, payload));
    expect(result[0]?.t === "command" && result[0].command.t === "pub" && result[0].command.payload.byteLength).toBe(EVENT_BYTES_MAX);
  });

  test("a bad tag with a readable n: BAD_REQUEST, and the n bytes are still consumed", () => {
    expect(plain(parseWhole(bytes("PUBB BAD 5\nPING\nPING\n")))).toEqual([refusedWith("BAD_REQUEST"), cmd({ t: "ping" })]);
  });

  test("an unreadable n closes the stream: its payload, which could hold a PUB line, is never read as commands", () => {
    for (const count of ["05", "-1", "abc", "5x", "1e3", "+3", "99999999999999999", ""]) {
      const line = count === "" ? "PUBB t\n" : `PUBB t ${count}\n`;
      const result = plain(parseWhole(bytes(`${line}PUB net.links injected-from-payload\nPING\n`)));
      expect(result).toEqual([expect.objectContaining({ t: "refused", code: "BAD_REQUEST", closes: true })]);
      expect(JSON.stringify(result)).toContain("cannot be told from commands: closing");
    }
  });

  test("PUBB with a missing or extra field is BAD_REQUEST, and closes the stream", () => {
    for (const line of ["PUBB\n", "PUBB t 1 2\n", "PUBB t  1\n"]) {
      const result = parseWhole(bytes(`${line}PING\n`));
      expect(result.map((input) => (input.t === "refused" ? [input.code, input.closes] : "?"))).toEqual([["BAD_REQUEST", true]]);
    }
  });
});

describe("relay line parser: SUB, UNSUB, PING, QUIT", () => {
  test("SUB numbers: 0, the largest safe integer, no leading zeros, no sign, nothing larger", () => {
    expect(plain(parseWhole(bytes(`SUB t 0\nSUB t ${Number.MAX_SAFE_INTEGER}\n`)))).toEqual([
      cmd({ t: "sub", tag: "t", from: 0 }),
      cmd({ t: "sub", tag: "t", from: Number.MAX_SAFE_INTEGER }),
    ]);
    for (const from of ["01", "-1", "+1", "9007199254740992", "1.5", "x"]) {
      expect(plain(parseWhole(bytes(`SUB t ${from}\n`)))).toEqual([refusedWith("BAD_REQUEST")]);
    }
  });

  test("SUB and UNSUB with missing, empty or extra fields are BAD_REQUEST", () => {
    const result = parseWhole(bytes("SUB\nSUB t 1 2\nSUB t \nSUB  t\nUNSUB\nUNSUB t 1\nUNSUB T\n"));
    expect(result).toHaveLength(7);
    expect(result.every((input) => input.t === "refused" && input.code === "BAD_REQUEST")).toBe(true);
  });

  test("PING and QUIT take no arguments", () => {
    const result = parseWhole(bytes("PING x\nQUIT now\nPING \n"));
    expect(result.map((input) => (input.t === "refused" ? input.code : "?"))).toEqual(["BAD_REQUEST", "BAD_REQUEST", "BAD_REQUEST"]);
  });
});
