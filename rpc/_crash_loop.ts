/**
 * Crash loops: a connection that dies the same way again and again, soon
 * after each reconnection. The usual cause is a request that kills
 * whatever receives it (headers too deeply nested to decode, say): the
 * broker hands it back on every new connection, to every server on the
 * queue, for as long as it stays. Reconnecting at once only spins (7 times
 * a second, with 4 log lines each); so after a few such deaths in a row,
 * reconnections back off up to {@linkcode CRASH_LOOP_BACKOFF}'s cap and
 * one line per period says why, and what ends it: a delivery limit with a
 * dead-letter queue (rpc/README.md, "Crash loops").
 *
 * @module
 */
import { type Backoff, backoffDelay } from "./_backoff.ts";

/** A connection that dies within this many ms of opening died young. */
export const SHORT_LIFE_MS = 30_000;
/** Young deaths in a row, the same way, that make a crash loop. */
export const CRASH_LOOP_AFTER = 3;
/** How reconnections back off in a crash loop: from 1 s to 30 s. */
export const CRASH_LOOP_BACKOFF: Backoff = { first: 1_000, max: 30_000 };
/** The least time between two lines about a crash loop, in ms. */
export const CRASH_LOOP_REPORT_MS = 30_000;

/** The policy line rpc/README.md explains, for the log. */
const REMEDY = `rabbitmqctl set_policy rpc-delivery-limit '^QUEUE$' ` +
  `'{"delivery-limit":5,"dead-letter-exchange":"","dead-letter-routing-key":"QUEUE.dead"}' ` +
  `--apply-to queues`;

/**
 * Watches one connection's lives and deaths; says when it is in a crash
 * loop, how long to wait before reconnecting, and what to log.
 *
 * @example
 * ```ts
 * const watch = new CrashLoopWatch();
 * watch.up();
 * watch.down("the connection broke off");
 * watch.looping; // false: one death is no loop
 * ```
 */
export class CrashLoopWatch {
  #upSince?: number;
  /** Young deaths in a row, each the same way as the one before. */
  #deaths = 0;
  #lastFailure?: string;
  #lastReport = -Infinity;
  #deathsSinceReport = 0;

  /** A connection is up (set up, consuming). */
  up(): void {
    this.#upSince = Date.now();
  }

  /** The connection that was up died, as `failure` says. */
  down(failure: string): void {
    const young = this.#upSince !== undefined && Date.now() - this.#upSince < SHORT_LIFE_MS;
    this.#upSince = undefined;
    if (!young) this.#deaths = 0;
    else if (failure === this.#lastFailure) this.#deaths++;
    else this.#deaths = 1;
    this.#lastFailure = failure;
    this.#deathsSinceReport++;
  }

  /** Whether the connection is in a crash loop: log lines about each loss are left out then. */
  get looping(): boolean {
    return this.#deaths >= CRASH_LOOP_AFTER;
  }

  /** The least wait before reconnecting, in ms: 0 unless in a crash loop. */
  delay(): number {
    if (!this.looping) return 0;
    return backoffDelay(this.#deaths - CRASH_LOOP_AFTER + 1, CRASH_LOOP_BACKOFF);
  }

  /**
   * The line to log about the crash loop, at most once per
   * {@linkcode CRASH_LOOP_REPORT_MS}; undefined if not in one, or if the
   * last line is recent. `where` names the broker, `delay` the next wait.
   */
  report(where: string, delay: number): string | undefined {
    const now = Date.now();
    if (!this.looping || now - this.#lastReport < CRASH_LOOP_REPORT_MS) return undefined;
    const deaths = this.#lastReport === -Infinity
      ? `${this.#deathsSinceReport} times in a row`
      : `${this.#deathsSinceReport} more times`;
    [this.#lastReport, this.#deathsSinceReport] = [now, 0];
    return ` [!] Crash loop: the connection to ${where} died ${deaths}, ` +
      `each within ${SHORT_LIFE_MS / 1000} s of opening ` +
      `(${this.#lastFailure}). Likely cause: a message that kills whoever receives it, ` +
      `redelivered each time. Reconnecting in ${(delay / 1000).toFixed(1)} s, backing off ` +
      `up to ${CRASH_LOOP_BACKOFF.max / 1000} s; this line comes at most every ` +
      `${CRASH_LOOP_REPORT_MS / 1000} s. Remedy: a delivery limit with a dead-letter queue ` +
      `(RabbitMQ 4 quorum queues default to 20, 3.x has none), e.g. ${REMEDY}`;
  }
}
