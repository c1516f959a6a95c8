/**
 * A client's pending calls: each waits for its reply under its correlation
 * id, until the reply, its deadline or its abort signal settles it, once.
 *
 * @module
 */
import type { Buffer } from "node:buffer";
import type { Message } from "npm:amqplib@2.3.1";
import { ERROR_CODE_HEADER, RpcError } from "./errors.ts";
import type { Session } from "./_session.ts";
import { DeadlineSweep } from "./deadlines.ts";

/** A call waiting for its reply. */
export interface PendingCall {
  /** The queue the request goes to. */
  readonly queue: string;
  /** Names the call in messages and traces. */
  readonly label: string;
  /** The request's body. */
  readonly request: Buffer;
  /** The request's `content_type`, if any. */
  readonly contentType: string | undefined;
  /** The request's `correlation_id`, which its reply carries back. */
  readonly correlationId: string;
  /** The caller's application headers, and `traceparent` and `tracestate` with tracing on. */
  readonly headers: Readonly<Record<string, unknown>> | undefined;
  /** When the caller stops waiting: ms since 1970. */
  readonly deadline: number;
  /** The call's timeout, in ms. */
  readonly timeout: number;
  /** Wait for a reconnection and send again, instead of failing at once. */
  readonly retry: boolean;
  /** The session (connection) it went out on; undefined while it waits to be sent. */
  sentOn?: Session;
  /** It waited through a lost connection. */
  lostConnection: boolean;
  /** Settles the caller's promise with the reply. */
  resolve(value: Uint8Array): void;
  /** Settles the caller's promise with an error. */
  reject(error: unknown): void;
  /** The caller's abort signal. */
  signal?: AbortSignal;
  /** How many times the broker refused it (a nack), for the backoff of `retry`. */
  refusals: number;
}

/**
 * The calls waiting for their reply, by correlation id, with one timer for
 * all their deadlines.
 *
 * @example
 * ```ts
 * declare const call: PendingCall, signal: AbortSignal, reply: Uint8Array;
 * const pending = new PendingCalls((expired) => console.log(expired.length, "timed out"));
 * pending.add(call, signal);
 * pending.settle(call, reply); // resolves it, once
 * ```
 */
export class PendingCalls {
  readonly #calls = new Map<string, PendingCall>();
  readonly #deadlines: DeadlineSweep<PendingCall>;
  /**
   * The calls that wait on each abort signal, under one listener per signal.
   * One listener per call would make aborting n calls quadratic: each
   * settled call would remove its listener from a list of n while the
   * signal still delivers the abort.
   */
  readonly #bySignal = new Map<AbortSignal, { calls: Set<PendingCall>; onAbort: () => void }>();

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
    if (signal) this.#watch(call, signal);
  }

  /** Aborts: a signal's abort rejects its calls with the signal's reason. */
  #watch(call: PendingCall, signal: AbortSignal): void {
    call.signal = signal;
    let watched = this.#bySignal.get(signal);
    if (!watched) {
      const calls = new Set<PendingCall>();
      const onAbort = () => {
        this.#bySignal.delete(signal); // so that settling them removes nothing, one by one
        for (const waiting of calls) this.settle(waiting, signal.reason);
      };
      this.#bySignal.set(signal, watched = { calls, onAbort });
      signal.addEventListener("abort", onAbort, { once: true });
    }
    watched.calls.add(call);
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
    if (call.signal) this.#unwatch(call, call.signal);
    return true;
  }

  /** The last call on a signal takes the signal's listener with it: a long-lived signal keeps nothing. */
  #unwatch(call: PendingCall, signal: AbortSignal): void {
    const watched = this.#bySignal.get(signal);
    if (!watched?.calls.delete(call) || watched.calls.size > 0) return;
    this.#bySignal.delete(signal);
    signal.removeEventListener("abort", watched.onAbort);
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

/**
 * A call's reply: too large (unread), an error reply (`type: "error"`,
 * the server's message, the code its `x-error-code` header names), or the
 * answer's bytes.
 *
 * @example
 * ```ts
 * import type { Message } from "npm:amqplib@2.3.1";
 *
 * declare const pending: PendingCalls, call: PendingCall, message: Message;
 * pending.settle(call, readReply(call, message, 64 * 1024));
 * ```
 */
export function readReply(
  call: PendingCall,
  message: Message,
  maxReplyBytes: number,
): Uint8Array | RpcError {
  const { content, properties } = message;
  if (content.length > maxReplyBytes) {
    return new RpcError(
      "bad-reply",
      `${call.label}: the reply has ${content.length} bytes, more than the ${maxReplyBytes} accepted`,
    );
  }
  if (properties.type === "error") {
    return new RpcError(errorCode(properties.headers), content.toString("utf8"));
  }
  return content;
}

/**
 * An error reply's code, from its {@linkcode ERROR_CODE_HEADER}: a short
 * word (a server's reply is input too); `"remote"` if there is none, as
 * from older servers and other tutorial servers.
 */
function errorCode(headers: Record<string, unknown> | undefined): string {
  const code = headers && Object.hasOwn(headers, ERROR_CODE_HEADER)
    ? headers[ERROR_CODE_HEADER]
    : undefined;
  return typeof code === "string" && /^[\w.:-]{1,64}$/.test(code) ? code : "remote";
}
