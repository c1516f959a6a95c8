/**
 * The one backoff of rpc/: how long to wait before trying again, doubling
 * with each failure up to a cap, with some jitter so that many clients do
 * not come back at the same moment. Used for reconnecting and for crash
 * loops (_connection.ts, _crash_loop.ts), for fresh publishing channels
 * (_session.ts) and for requests the broker refused (_retry.ts).
 *
 * @module
 */

/** How a backoff grows. */
export interface Backoff {
  /** The first wait, in ms. */
  first: number;
  /** The longest wait, in ms. */
  max: number;
  /** Each wait is off by up to this fraction, either way. Default: 0.2. */
  jitter?: number;
}

/**
 * The wait before try number `failures + 1`: `first` after one failure,
 * twice that after two, and so on up to `max`, give or take `jitter`.
 * `failures` below 1 counts as 1.
 *
 * @example
 * ```ts
 * backoffDelay(3, { first: 100, max: 5_000, jitter: 0 }); // 400
 * ```
 */
export function backoffDelay(failures: number, { first, max, jitter = 0.2 }: Backoff): number {
  const exponent = Math.max(0, Math.min(failures - 1, 30));
  const delay = Math.min(max, first * 2 ** exponent);
  return Math.round(delay * (1 - jitter + Math.random() * 2 * jitter));
}
