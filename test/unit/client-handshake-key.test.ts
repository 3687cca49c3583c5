// A replica presenting another key than the one the client expects (src/client/handshake.ts):
// after rotate-replica-key the message names the key the replica presented and the key the
// cluster file (or the followed group) lists, each for what it is, and what to do.
import { describe, expect, test } from "bun:test";
import type { HelloAck } from "../../wire/schemas.ts";
import { sessionTranscript } from "../../wire/session.ts";
import { DOMAIN_SESSION_RESPONDER, NONCE_BYTES } from "../../wire/types.ts";
import { checkHelloAck, clientHello, type ExpectedReplica, keyMismatchReason } from "../../src/client/handshake.ts";
import { signDomain } from "../../src/crypto/ed25519.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";
import { generateEphemeralKeyPair } from "../../src/crypto/session.ts";

const clientKey = SigningKey.generate();
const oldKey = SigningKey.generate();
const newKey = SigningKey.generate();
const OLD = formatPublicKey(oldKey.publicKey);
const NEW = formatPublicKey(newKey.publicKey);

/** The HELLO_ACK replica `id` answers a fresh HELLO with, signed by `key`. */
function answer(id: number, key: SigningKey): { handshake: ReturnType<typeof clientHello>; ack: HelloAck } {
  const handshake = clientHello(clientKey);
  const unsigned = {
    v: handshake.hello.v,
    replica: id,
    key: key.publicKey,
    nonce: new Uint8Array(NONCE_BYTES).fill(7),
    eph: generateEphemeralKeyPair().publicKey,
  };
  const ack: HelloAck = { ...unsigned, sig: signDomain(key, DOMAIN_SESSION_RESPONDER, sessionTranscript(handshake.hello, unsigned)) };
  return { handshake, ack };
}

function refusal(expected: ExpectedReplica, presented: SigningKey): string {
  const { handshake, ack } = answer(expected.id, presented);
  const check = checkHelloAck(handshake, ack, expected, clientKey);
  if (check.ok) throw new Error("the handshake passed");
  expect(check.code).toBe("UNAUTHORIZED");
  return check.reason;
}

describe("a replica presenting a key other than the one expected", () => {
  test("the key the replica presented and the one the cluster file lists are each named as such", () => {
    // The cluster file still lists the old key; the replica runs with its new one.
    const reason = refusal({ id: 1, publicKey: oldKey.publicKey }, newKey);
    expect(reason).toStartWith(`presented key ${NEW}, but the cluster file lists ${OLD} for replica 1: `);
    expect(reason).toContain("re-export it with `fitb cluster export` and give it to the clients");
    // Each key once: never the new one twice.
    expect(reason.split(NEW)).toHaveLength(2);
    expect(reason.split(OLD)).toHaveLength(2);
    expect(refusal({ id: 1, publicKey: oldKey.publicKey, keySource: "file" }, newKey)).toBe(reason);
  });

  test("a key taken from the followed group is named as the group's, and the replica is to be restarted with it", () => {
    // The client followed the group to the rotation's epoch; replica 1 still runs with its old key.
    const reason = refusal({ id: 1, publicKey: newKey.publicKey, keySource: { epoch: 3 } }, oldKey);
    expect(reason).toStartWith(
      `presented key ${OLD}, but the replica group of epoch 3 (which this client follows) lists ${NEW} for replica 1: `,
    );
    expect(reason).toContain("restart replica 1 with the new key file");
    expect(reason).not.toContain("cluster file lists");
    expect(reason.split(NEW)).toHaveLength(2);
    expect(reason.split(OLD)).toHaveLength(2);
  });

  test("keyMismatchReason is what checkHelloAck reports; the expected key passes", () => {
    const expected: ExpectedReplica = { id: 2, publicKey: oldKey.publicKey };
    expect(refusal(expected, newKey)).toBe(keyMismatchReason(expected, newKey.publicKey));
    const { handshake, ack } = answer(2, oldKey);
    expect(checkHelloAck(handshake, ack, expected, clientKey).ok).toBe(true);
  });
});
