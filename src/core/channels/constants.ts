/**
 * Every bound of the channel state machine, in one place. Each one caps memory, snapshot
 * size or the work one input can cause; the behaviour at each bound is tested.
 */

/** Hard ceiling on channels; the configured `channelsMax` may only be lower. */
export const CHANNELS_MAX = 4096;

/** Registered keys per role (publishers, subscribers) per channel. */
export const KEYS_PER_CHANNEL_MAX = 1024;

/** A channel tag is at most this many bytes (tags are ASCII, so also characters). */
export const TAG_BYTES_MAX = 128;

/** Ed25519 public keys are 32 raw bytes inside the core. */
export const PUBLIC_KEY_BYTES = 32;

/** SHA-256 digests are 32 bytes; the injected hash must produce exactly this. */
export const DIGEST_BYTES = 32;

/** Ceiling on a configured per-channel `retention.events`. */
export const RETAINED_EVENTS_PER_CHANNEL_MAX = 10_000_000;

/** Ceiling on a configured per-channel `retention.bytes`. */
export const RETAINED_BYTES_PER_CHANNEL_MAX = 1024 * 1024 * 1024;

/**
 * Ceiling on `channelsMax × retention.bytes`: the retained bytes of all channels together,
 * which is what a snapshot and a replica's memory must be able to hold.
 */
export const RETAINED_BYTES_TOTAL_MAX = 16 * 1024 * 1024 * 1024;

/** Ceiling on a configured `requestBytesMax` (signed body + signature of one request). */
export const REQUEST_BYTES_MAX = 2 * 1024 * 1024;

/** Batches one `readFrom` returns at most; larger asks are clamped to it. */
export const READ_BATCHES_MAX = 1024;

/**
 * Distinct publisher seq ranges remembered per publisher per unordered channel for
 * dedupe. A publisher's seqs are consecutive across all its requests, so on one channel
 * they have gaps where it published elsewhere; past this many ranges the oldest is
 * forgotten and everything at or below it counts as seen (a late copy there is refused).
 */
export const UNORDERED_DEDUPE_RANGES_MAX = 256;

/**
 * Newest stored batches of an unordered channel searched for the request a duplicate
 * claims to repeat: a retry of the same bytes is acknowledged again, anything else
 * (or a request this far back) is refused as replayed, never acknowledged unstored.
 */
export const UNORDERED_RETRY_SCAN_MAX = 4096;

/** Bytes a canonical channel record may take in a snapshot (two full key lists + fields). */
export const CHANNEL_RECORD_BYTES_MAX = 2 * KEYS_PER_CHANNEL_MAX * (PUBLIC_KEY_BYTES + 3) + 4096;

/** Bytes a batch record takes in a snapshot beyond its body and signature. */
export const BATCH_RECORD_OVERHEAD_BYTES_MAX = 160;

/** The largest single framed record a snapshot may contain. */
export const SNAPSHOT_RECORD_BYTES_MAX = REQUEST_BYTES_MAX + BATCH_RECORD_OVERHEAD_BYTES_MAX + CHANNEL_RECORD_BYTES_MAX;

/** Bytes of the length prefix in front of every snapshot record. */
export const SNAPSHOT_FRAME_HEADER_BYTES = 4;

/** Default and ceiling of one exported snapshot chunk. */
export const SNAPSHOT_CHUNK_BYTES_DEFAULT = 1024 * 1024;
export const SNAPSHOT_CHUNK_BYTES_MAX = 64 * 1024 * 1024;

/** The snapshot format this code writes and reads. */
export const SNAPSHOT_FORMAT_VERSION = 1;

/** Client keys with a quota of their own (set-quota), at most. */
export const QUOTAS_MAX = 4096;

/** Upper bound on one quota entry in a snapshot header (key, three limits, CBOR framing). */
export const QUOTA_RECORD_BYTES_MAX = 128;

/**
 * Upper bound on the membership record of a snapshot header: two groups (current and
 * pending) of at most REPLICAS_MAX members, each an id, a host of at most 253 bytes, two
 * ports and a key, with CBOR field names.
 */
export const MEMBERSHIP_RECORD_BYTES_MAX = 2 * 64 * 400 + 256;
