/**
 * The client's retry policy, in one place. Retrying is opt-in: the
 * `retry` option of a client, or of one call. Without it a call fails at
 * once when its connection is lost (`connection-lost`) or the broker
 * refuses its request (`rejected`). With it the call waits for the
 * reconnection and goes out again, with the same correlation id and what
 * is left of its deadline, and a refused request goes out again after a
 * short backoff. Safe only for idempotent handlers: the first request may
 * have been answered into a lost callback queue, and is computed twice.
 *
 * @module
 */
import { type Backoff, backoffDelay } from "./_backoff.ts";
import { RpcError } from "./errors.ts";
import type { RateLimitedLog } from "./_log.ts";
import type { PendingCall, PendingCalls } from "./_pending.ts";
import type { Session } from "./_session.ts";

/** Waits before a refused request goes out again with `retry`: 50 ms, doubling up to 1 s. */
const REFUSED_RETRY_BACKOFF: Backoff = { first: 50, max: 1_000 };

/**
 * What a client does with its calls when a connection or the broker fails
 * them: fail them with the right code, or, with `retry`, send them again.
 *
 * @example
 * ```ts
 * import { RateLimitedLog } from "./_log.ts";
 * import { type PendingCall, PendingCalls } from "./_pending.ts";
 *
 * declare const call: PendingCall;
 * const pending = new PendingCalls(() => {});
 * const retrying = new Retrying(pending, (call) => console.log("send", call.label), new RateLimitedLog(null));
 * retrying.notConnected(call); // fails it with `connection-lost`, unless it has `retry`
 * ```
 */
export class Retrying {
  readonly #pending: PendingCalls;
  readonly #send: (call: PendingCall) => void;
  readonly #log: RateLimitedLog;

  /** `send` publishes a call again; `log` hears each refusal. */
  constructor(pending: PendingCalls, send: (call: PendingCall) => void, log: RateLimitedLog) {
    this.#pending = pending;
    this.#send = send;
    this.#log = log;
  }

  /**
   * Publisher confirms: the broker nacked a request it refused (the queue
   * is full, or has no leader yet). The refused call fails alone, at once,
   * with `rejected`; with `retry` it goes out again after a short backoff,
   * within its own deadline. The other calls in flight, which the broker
   * took, wait for their replies.
   */
  refused(call: PendingCall, session: Session, refusal: Error): void {
    if (refusal.message === "channel closed" || call.sentOn !== session) return; // see connectionLost
    call.sentOn = undefined;
    const delay = backoffDelay(++call.refusals, REFUSED_RETRY_BACKOFF);
    this.#log.write(
      ` [!] "${call.queue}" refused a request (${refusal.message})` +
        (call.retry ? `; sending it again in ${delay} ms` : ""),
      "refused",
    );
    if (call.retry && Date.now() + delay < call.deadline) {
      setTimeout(() => {
        if (this.#pending.get(call.correlationId) === call && !call.sentOn) this.#send(call);
      }, delay);
      return;
    }
    const text = `${call.label}: the queue "${call.queue}" refused the request ` +
      `(it is full, or has no leader yet)`;
    this.#pending.settle(call, new RpcError("rejected", text));
  }

  /**
   * A channel closed under the client: the calls sent on its connection
   * (their replies would come to a callback queue that is gone) and those
   * waiting to be sent fail at once with `connection-lost`, except those
   * with `retry`, which wait to go out again.
   */
  connectionLost(session: Session): void {
    for (const call of this.#pending.values()) {
      if (call.sentOn !== session && call.sentOn !== undefined) continue;
      call.sentOn = undefined;
      call.lostConnection = true;
      if (!call.retry) {
        const text = `${call.label}: lost the connection to the broker`;
        this.#pending.settle(call, new RpcError("connection-lost", text));
      }
    }
  }

  /** Not connected now: fail at once, or, with `retry`, wait for the reconnection. */
  notConnected(call: PendingCall): void {
    if (call.retry) return;
    const text = `${call.label}: not connected to the broker (reconnecting)`;
    this.#pending.settle(call, new RpcError("connection-lost", text));
  }

  /** After a reconnection: the calls that wait go out again. */
  sendWaitingCalls(): void {
    for (const call of this.#pending.values()) {
      if (call.sentOn === undefined) this.#send(call);
    }
  }
}
