/**
 * The tarpit: connections from an address already judged hostile (blacklisted,
 * admission.ts) are held open with their reads paused instead of being reset. Nothing is
 * read from a held connection, so the kernel's receive window fills and the sender's writes
 * stop being taken: an attacker that writes as fast as it can, then reconnects when it is
 * reset, instead waits on a socket that costs this replica one file descriptor and the
 * kernel's receive buffer, and costs the attacker nothing while it waits.
 *
 * Bounded in every direction: at most `perAddressMax` held connections per remote address
 * and `totalMax` in all (the caller refuses the others as it did before: reset), each held
 * at most `holdMsMax`, then reset. The oldest connection is first in the map (all are held
 * for the same time), so expiring is a walk from the front that stops at the first one
 * still within its time.
 *
 * Why a held connection's end may go unnoticed until its time is up: the sender's FIN
 * waits behind the bytes it queued, which the full receive window never lets through.
 * The hold time bounds it.
 */

/** What the tarpit needs of a socket (Bun's Socket). */
export interface TarpitSocket {
  /** Stops reading: the kernel's receive buffer fills and the sender's writes block. */
  pause(): void;
  /** Closes at once, discarding what is buffered either way (a reset). */
  terminate(): void;
}

/** Connections held per remote address at most: room for one host's reconnecting loops, not for every slot. */
export const TARPIT_PER_ADDRESS_MAX = 16;
/**
 * Connections held in all. Each holds a file descriptor (a replica takes up to
 * CLIENT_CONNECTIONS_MAX plus HANDSHAKES_MAX client sockets, and `fitb service` gives it
 * LimitNOFILE=65536: this is 5% more sockets) and, never read, the kernel's default
 * receive buffer, which Linux grows only as the application reads (tcp_rmem's default,
 * 128 KiB: `ss -m` shows 129 KiB queued on a held loopback connection whose sender has
 * 3.8 MB waiting on its own side). 256 of them cost this host about 32 MiB of kernel memory.
 */
export const TARPIT_CONNECTIONS_MAX = 256;
/**
 * How long a connection is held, then reset. Past this the attacker may reconnect, so one
 * address costs a replica at most TARPIT_PER_ADDRESS_MAX connections per this time while
 * its slots are full; a longer hold gains little and keeps a slot from another address.
 */
export const TARPIT_HOLD_MS_MAX = 30_000;

interface Held {
  readonly address: string;
  readonly sinceMs: number;
}

export class Tarpit<S extends TarpitSocket> {
  private readonly held = new Map<S, Held>();
  private readonly byAddress = new Map<string, number>();

  constructor(
    readonly perAddressMax: number,
    readonly totalMax: number,
    readonly holdMsMax: number,
  ) {
    for (const [name, value] of Object.entries({ perAddressMax, totalMax })) {
      if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`tarpit ${name} must be a non-negative integer, got ${value}`);
    }
    if (!Number.isSafeInteger(holdMsMax) || holdMsMax < 1)
      throw new RangeError(`tarpit holdMsMax must be a positive integer, got ${holdMsMax}`);
  }

  /** Connections held now. */
  get size(): number {
    return this.held.size;
  }

  /** Connections held now from `address`. */
  heldFrom(address: string): number {
    return this.byAddress.get(address) ?? 0;
  }

  /** Whether one more connection from `address` may be held now. */
  hasRoomFor(address: string): boolean {
    return this.held.size < this.totalMax && this.heldFrom(address) < this.perAddressMax;
  }

  /**
   * Holds `socket` (from `address`, as of `nowMs`) with its reads paused, if there is room
   * for one more from that address and in all; false, and nothing done, if there is not.
   */
  hold(socket: S, address: string, nowMs: number): boolean {
    if (this.held.has(socket)) return true;
    if (!this.hasRoomFor(address)) return false;
    socket.pause();
    this.held.set(socket, { address, sinceMs: nowMs });
    this.byAddress.set(address, this.heldFrom(address) + 1);
    return true;
  }

  /** The socket closed, from either side: it is forgotten (nothing if it was not held). */
  release(socket: S): void {
    const entry = this.held.get(socket);
    if (entry === undefined) return;
    this.held.delete(socket);
    const left = this.heldFrom(entry.address) - 1;
    if (left < 0) throw new Error(`tarpit: ${entry.address} released more often than held`);
    if (left === 0) this.byAddress.delete(entry.address);
    else this.byAddress.set(entry.address, left);
  }

  /** Resets the connections held for holdMsMax or longer as of `nowMs`; returns how many. */
  expire(nowMs: number): number {
    let expired = 0;
    for (const [socket, entry] of this.held) {
      if (nowMs - entry.sinceMs < this.holdMsMax) break;
      this.release(socket);
      socket.terminate();
      expired++;
    }
    return expired;
  }

  /** Resets every held connection (the server stops). */
  clear(): void {
    for (const socket of [...this.held.keys()]) {
      this.release(socket);
      socket.terminate();
    }
  }
}
