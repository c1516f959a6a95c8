/**
 * A client's pending calls: each waits for its reply under its correlation
 * id, until the reply, its deadline or its abort signal settles it, once.
 *
 * @module
 */
import type { Buffer } from "node:buffer";
import type { Channel } from "npm:amqplib@^2.3.1";
import { DeadlineSweep } from "./deadlines.ts";

/** A call waiting for its reply. */
export interface PendingCall {
  /** The queue the request goes to. */
  readonly queue: string;
  /** Names the call in messages and traces. */
  readonly label: string;
  /** The request's body. */
  readonly request: Buffer;
  /** The request's `correlation_id`, which its reply carries back. */
  readonly correlationId: string;
  /** When the caller stops waiting: ms since 1970. */
  readonly deadline: number;
  /** The call's timeout, in ms. */
  readonly timeout: number;
  /** Wait for a reconnection and send again, instead of failing at once. */
  readonly retry: boolean;
  /** The channel it went out on; undefined while it waits to be sent. */
  sentOn?: Channel;
  /** It waited through a lost connection. */
  lostConnection: boolean;
  /** Settles the caller's promise with the reply. */
  resolve(value: Uint8Array): void;
  /** Settles the caller's promise with an error. */
  reject(error: unknown): void;
  /** The caller's abort signal, and the listener on it. */
  signal?: AbortSignal;
  onAbort?: () => void;
}

/**
 * The calls waiting for their reply, by correlation id, with one timer for
 * all their deadlines.
 *
 * @example
 * ```ts
 * const pending = new PendingCalls((expired) => console.log(expired.length, "timed out"));
 * pending.add(call, signal);
 * pending.settle(call, reply); // resolves it, once
 * ```
 */
export class PendingCalls {
  readonly #calls = new Map<string, PendingCall>();
  readonly #deadlines: DeadlineSweep<PendingCall>;

  /** `onExpired` hears the calls whose deadline passed; they are forgotten already. */
  constructor(onExpired: (calls: PendingCall[]) => void) {
    this.#deadlines = new DeadlineSweep((calls) => {
      const expired = calls.filter((call) => this.forget(call));
      if (expired.length > 0) onExpired(expired);
    });
  }

  /** Registers a call (before it is published, so that no reply can outrun it). */
  add(call: PendingCall, signal: AbortSignal | undefined): void {
    this.#calls.set(call.correlationId, call);
    this.#deadlines.add(call);
    if (!signal) return;
    // Aborts: a signal's abort rejects the call with the signal's reason.
    call.signal = signal;
    call.onAbort = () => this.settle(call, signal.reason);
    signal.addEventListener("abort", call.onAbort, { once: true });
  }

  /** The call waiting for this correlation id, if any. */
  get(correlationId: unknown): PendingCall | undefined {
    return this.#calls.get(correlationId as string);
  }

  /**
   * Ends one pending call: forgets it, and resolves it with the reply's
   * bytes or rejects it with anything else (an RpcError, an abort reason).
   * A call already settled stays as it was.
   */
  settle(call: PendingCall, outcome: unknown): void {
    if (!this.forget(call)) return;
    if (outcome instanceof Uint8Array) call.resolve(outcome);
    else call.reject(outcome);
  }

  /** Takes a call out, so that its reply, if one comes, is dropped; false if it was out already. */
  forget(call: PendingCall): boolean {
    if (this.#calls.get(call.correlationId) !== call) return false;
    this.#calls.delete(call.correlationId);
    this.#deadlines.delete(call);
    if (call.onAbort) call.signal?.removeEventListener("abort", call.onAbort);
    return true;
  }

  /** The pending calls, in the order they were made. */
  values(): IterableIterator<PendingCall> {
    return this.#calls.values();
  }

  /** How many calls wait. */
  get size(): number {
    return this.#calls.size;
  }

  /** Stops the deadline timer, for good. */
  stop(): void {
    this.#deadlines.stop();
  }
}
