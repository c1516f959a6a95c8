/**
 * Deadlines: the headers that carry a call's deadline to the server, how
 * the server reads them on its own clock, and one timer for all of a
 * client's pending calls.
 *
 * @module
 */

/**
 * Our client sends each request's deadline in this header: ms since 1970
 * by the caller's clock. Older servers read only this one; a server reads
 * it only when {@linkcode TIMEOUT_HEADER} is missing (an older client).
 */
export const DEADLINE_HEADER = "x-deadline";

/**
 * Our client sends, in this header, the ms its caller still waits at the
 * moment the request is published, as gRPC's `grpc-timeout` does. The
 * server adds it to its own clock on receipt, so clocks that disagree by
 * seconds do not matter. The time a request waits in the queue is not in
 * it: the broker drops a request that waits past its `expiration` (which
 * the client sets to the same ms), redelivered ones included.
 */
export const TIMEOUT_HEADER = "x-timeout-ms";

/**
 * How long past its caller's deadline a request is still computed, in ms,
 * when the caller sent only {@linkcode DEADLINE_HEADER} (an older client):
 * that instant is read on another machine's clock, so this allows for
 * clocks up to a quarter of a second apart. A server whose clock runs
 * ahead by more skips requests its callers still wait for; one that runs
 * behind computes some that nobody reads.
 */
export const DEADLINE_GRACE_MS = 250;

/** The longest timeout a request may carry, in ms: about 24.8 days, the longest timer there is. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * The deadline headers of a request published now whose caller waits
 * until `deadline` (ms since 1970, this clock): both the time left
 * ({@linkcode TIMEOUT_HEADER}) and, for older servers, the instant
 * ({@linkcode DEADLINE_HEADER}).
 *
 * @example
 * ```ts
 * deadlineHeaders(Date.now() + 5_000); // { "x-deadline": 17…, "x-timeout-ms": 5000 }
 * ```
 */
export function deadlineHeaders(deadline: number, now: number = Date.now()): {
  [DEADLINE_HEADER]: number;
  [TIMEOUT_HEADER]: number;
} {
  const left = Math.min(MAX_TIMEOUT_MS, Math.max(1, Math.ceil(deadline - now)));
  return { [DEADLINE_HEADER]: deadline, [TIMEOUT_HEADER]: left };
}

/** A request's deadline as a server reads it: see {@linkcode readDeadline}. */
export interface ReceivedDeadline {
  /** When the caller stops waiting: ms since 1970 on the server's clock. */
  readonly deadline: number;
  /**
   * Past this instant the caller has surely given up: the deadline, plus
   * {@linkcode DEADLINE_GRACE_MS} when it was read on the caller's clock.
   */
  readonly gaveUpAfter: number;
}

/**
 * The deadline a request carries, on this server's clock, from headers
 * received at `receivedAt`: the time left ({@linkcode TIMEOUT_HEADER})
 * added to `receivedAt`; else, from an older client, its instant
 * ({@linkcode DEADLINE_HEADER}), taken as it is. Headers are input: a
 * value that is not a number in range counts as absent; `undefined` when
 * there is no usable deadline.
 *
 * @example
 * ```ts
 * readDeadline({ "x-timeout-ms": 400 }, Date.now())?.deadline; // 400 ms from now
 * ```
 */
export function readDeadline(
  headers: Readonly<Record<string, unknown>> | undefined,
  receivedAt: number,
): ReceivedDeadline | undefined {
  if (!headers) return undefined;
  const left = Object.hasOwn(headers, TIMEOUT_HEADER) ? headers[TIMEOUT_HEADER] : undefined;
  if (typeof left === "number" && left >= 0 && left <= MAX_TIMEOUT_MS) {
    const deadline = receivedAt + Math.ceil(left);
    return { deadline, gaveUpAfter: deadline };
  }
  const at = Object.hasOwn(headers, DEADLINE_HEADER) ? headers[DEADLINE_HEADER] : undefined;
  if (typeof at === "number" && Number.isFinite(at) && at > 0) {
    return { deadline: at, gaveUpAfter: at + DEADLINE_GRACE_MS };
  }
  return undefined;
}

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
