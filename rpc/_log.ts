/**
 * Logging at load: one line per request reads well at workshop pace and
 * costs a write per request at thousands a second.
 *
 * @module
 */

/** At most this many log lines a second; beyond it, one summary line a second. */
export const LOG_LINES_PER_SECOND = 20;

/**
 * A log that writes at most {@linkcode LOG_LINES_PER_SECOND} lines a second.
 * Past that, lines of a kind are counted instead, and one line a second
 * says how many. Lines without a kind (connections lost and found) are
 * always written.
 *
 * @example
 * ```ts
 * const log = new RateLimitedLog(console.log);
 * log.write(() => " [.] fib(30)", "requests"); // built only if shown
 * log.flush();
 * ```
 */
export class RateLimitedLog {
  readonly #write: ((line: string) => void) | null;
  #windowStart = 0;
  #written = 0;
  readonly #held = new Map<string, number>();
  #timer?: ReturnType<typeof setTimeout>;

  /** `write` receives each line; `null` silences the log. */
  constructor(write: ((line: string) => void) | null) {
    this.#write = write;
  }

  /** Whether any line is written at all. */
  get enabled(): boolean {
    return this.#write !== null;
  }

  /** Writes the line (or what the function returns, built only if it is written). */
  write(line: string | (() => string | undefined), kind?: string): void {
    if (!this.#write) return;
    const now = Date.now();
    if (now - this.#windowStart >= 1000) [this.#windowStart, this.#written] = [now, 0];
    if (kind === undefined || this.#written++ < LOG_LINES_PER_SECOND) {
      const text = typeof line === "string" ? line : line();
      if (text !== undefined) this.#write(text);
      return;
    }
    this.#held.set(kind, (this.#held.get(kind) ?? 0) + 1);
    this.#timer ??= setTimeout(() => this.flush(), 1000);
  }

  /** Writes the summary of what was held back, now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#held.size === 0) return;
    const counts = [...this.#held].map(([kind, count]) => `${count} ${kind}`).join(", ");
    this.#held.clear();
    this.#write?.(` [.] Not shown: ${counts} (at most ${LOG_LINES_PER_SECOND} lines a second)`);
  }
}
