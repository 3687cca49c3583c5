/**
 * How test vectors write a canonical value as JSON: byte strings become {"$hex": "..."},
 * everything else is plain JSON (integers stay integers; all are safe integers). Another
 * implementation reads wire/vectors/*.json with these two rules.
 */
import { fromHex, toHex } from "./bytes.ts";
import type { Canonical } from "./canonical.ts";

export { fromHex, toHex };

export type VectorJson = null | boolean | number | string | VectorJson[] | { [key: string]: VectorJson };

const HEX_KEY = "$hex";

/** A canonical value as vector JSON. */
export function toVectorJson(value: Canonical): VectorJson {
  if (value instanceof Uint8Array) return { [HEX_KEY]: toHex(value) };
  if (Array.isArray(value)) return value.map(toVectorJson);
  if (value !== null && typeof value === "object") {
    const out: { [key: string]: VectorJson } = {};
    for (const key of Object.keys(value).sort()) {
      const item = value[key];
      if (item !== undefined) out[key] = toVectorJson(item);
    }
    return out;
  }
  return value;
}

/** Vector JSON back to the canonical value it stands for. */
export function fromVectorJson(json: VectorJson): Canonical {
  if (Array.isArray(json)) return json.map(fromVectorJson);
  if (json !== null && typeof json === "object") {
    const keys = Object.keys(json);
    const hex = json[HEX_KEY];
    if (keys.length === 1 && typeof hex === "string") return fromHex(hex);
    const out: { [key: string]: Canonical } = {};
    for (const key of keys) out[key] = fromVectorJson(json[key] as VectorJson);
    return out;
  }
  return json;
}
