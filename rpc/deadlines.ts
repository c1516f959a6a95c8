/**
 * Deadlines: the header that carries a call's deadline to the server, and
 * one timer for all of a client's pending calls.
 *
 * @module
 */

/**
 * Our client sends each request's deadline in this header: ms since 1970
 * by the caller's clock. Other tutorial clients send none.
 */
export const DEADLINE_HEADER = "x-deadline";

/**
 * How long past its caller's deadline a request is still computed, in ms.
 * The deadline is read on another machine's clock: this allows for clocks
 * up to a quarter of a second apart (NTP keeps them within milliseconds).
 * A server whose clock runs ahead by more skips requests its callers still
 * wait for; one that runs behind computes some that nobody reads.
 */
export const DEADLINE_GRACE_MS = 250;

/**
 * Throws a RangeError unless the timeout is a positive whole number of ms.
 *
 * @example
 * ```ts
 * checkTimeout(5_000); // 5000
 * ```
 */
export function checkTimeout(timeout: number): number {
  if (!Number.isSafeInteger(timeout) || timeout < 1) {
    throw new RangeError(`timeout must be a positive whole number of ms, got ${timeout}`);
  }
  return timeout;
}

/** What a {@linkcode DeadlineSweep} needs of a call. */
export interface WithDeadline {
  /** When the caller stops waiting: ms since 1970. */
  readonly deadline: number;
  /** The call's timeout, in ms: calls with the same timeout expire in order. */
  readonly timeout: number;
}

/**
 * Deadlines, with one timer for all pending calls rather than one each.
 * Calls with the same timeout expire in the order they were made, so each
 * timeout's calls form a queue whose head expires first: the timer is set
 * for the earliest head, and a sweep looks only at heads.
 *
 * @example
 * ```ts
 * const sweep = new DeadlineSweep<WithDeadline>((calls) => console.log(calls.length, "expired"));
 * sweep.add({ deadline: Date.now() + 1_000, timeout: 1_000 });
 * ```
 */
export class DeadlineSweep<Call extends WithDeadline> {
  readonly #queues = new Map<number, Set<Call>>();
  readonly #onExpired: (calls: Call[]) => void;
  #timer?: ReturnType<typeof setTimeout>;
  #timerAt = Infinity;

  /** `onExpired` hears the calls whose deadline has passed, a batch at a time. */
  constructor(onExpired: (calls: Call[]) => void) {
    this.#onExpired = onExpired;
  }

  /** Watches a call's deadline. */
  add(call: Call): void {
    let queue = this.#queues.get(call.timeout);
    if (!queue) this.#queues.set(call.timeout, queue = new Set());
    queue.add(call);
    if (call.deadline < this.#timerAt) this.#setTimer(call.deadline);
  }

  /** Forgets a call. The timer stays as it is: when it fires early, the sweep sets it again. */
  delete(call: Call): void {
    this.#queues.get(call.timeout)?.delete(call);
  }

  /** Stops the timer, for good. */
  stop(): void {
    this.#setTimer(Infinity);
  }

  #setTimer(at: number): void {
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = at === Infinity
      ? undefined
      : setTimeout(() => this.#sweep(), Math.max(0, at - Date.now()));
  }

  #sweep(): void {
    const now = Date.now();
    const expired: Call[] = [];
    let next = Infinity;
    for (const [timeout, queue] of this.#queues) {
      if (queue.size === 0) this.#queues.delete(timeout);
      for (const call of queue) {
        if (call.deadline > now) {
          next = Math.min(next, call.deadline);
          break;
        }
        expired.push(call);
      }
    }
    this.#setTimer(next);
    if (expired.length > 0) this.#onExpired(expired);
  }
}
