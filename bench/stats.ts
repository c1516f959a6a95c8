/**
 * # bench/stats.ts: the statistics of the turns
 *
 * Percentiles, the median with its spread (min–max) and a 95 % interval read
 * off the order statistics, and the median of per-turn ratios.
 *
 * @module
 */

/** A median, its spread over the turns, and a 95 % interval for it. */
export interface Spread {
  median: number;
  min: number;
  max: number;
  /**
   * A 95 % interval for the median, from the order statistics (no
   * assumption about the noise); NaN for fewer than 6 values, too few for one.
   */
  low: number;
  high: number;
}

/** The `p`th percentile of `values`, the nearest rank at or below. */
export function percentile(values: number[], p: number): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** The median of `values`, their min and max, and the median's 95 % interval. */
export function spread(values: number[]): Spread {
  const sorted = values.toSorted((a, b) => a - b);
  const middle = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  const k = sorted.length >= 6 ? medianIntervalRank(sorted.length) : NaN;
  return {
    median,
    min: sorted[0],
    max: sorted[sorted.length - 1],
    low: sorted[k] ?? NaN,
    high: sorted[sorted.length - 1 - k] ?? NaN,
  };
}

/**
 * Where the 95 % interval of a median starts, as a 0-based index into the
 * n sorted samples (it ends at the same distance from the top): the largest
 * i with P(X <= i) <= 2.5 % for X ~ Binomial(n, 1/2), the chance that fewer
 * than i + 1 samples fall below the true median: 2 for 13 samples (97.8 %).
 * From 6 samples up; below that even min to max covers less than 95 %.
 */
function medianIntervalRank(n: number): number {
  let atMost = 0; // P(X <= i)
  let exactly = 0.5 ** n; // P(X = i)
  let rank = 0;
  for (let i = 0; i < n / 2; i++) {
    atMost += exactly;
    if (atMost > 0.025) break;
    rank = i;
    exactly = (exactly * (n - i)) / (i + 1);
  }
  return rank;
}

/** Per-turn ratios a[i] / b[i], summarized: paired turns cancel shared drift. */
export function ratio(a: number[], b: number[]): Spread {
  return spread(a.map((value, i) => value / b[i]));
}

/** `record` with `fn` applied to each value. */
export function mapValues<T, U>(record: Record<string, T>, fn: (value: T, key: string) => U) {
  return Object.fromEntries(Object.entries(record).map(([key, value]) => [key, fn(value, key)]));
}
