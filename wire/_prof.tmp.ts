import { decodeCanonical } from "./canonical.ts";
import { requestSchema, encodeRequestBody, decodeRequestBody } from "./schemas.ts";
function time(label: string, n: number, f: (i: number) => void) { for (let i=0;i<5000;i++) f(i); const t=performance.now(); for (let i=0;i<n;i++) f(i); const dt=performance.now()-t; console.log(label.padEnd(30), (dt*1e3/n).toFixed(2), "us"); }
const mk = (seq: number) => ({ v: 1, client: new Uint8Array(32).fill(7), seq, span: 1, ts: 1_767_225_600_000, op: { t: "pub", tag: "net.links", events: [new Uint8Array(100)] } });
const one = encodeRequestBody(mk(1) as never);
const many = Array.from({length: 2000}, (_, i) => encodeRequestBody(mk(i+1) as never));
time("decodeRequestBody same", 100000, () => decodeRequestBody(one));
time("decodeRequestBody many", 100000, (i) => decodeRequestBody(many[i % 2000]!));
time("cbor many", 100000, (i) => decodeCanonical(many[i % 2000]!));
const vals = many.map((b) => decodeCanonical(b));
time("zod many", 100000, (i) => requestSchema.safeParse(vals[i % 2000]));
time("zod same", 100000, (i) => requestSchema.safeParse(vals[0]));
