/**
 * # bench/verdicts.ts: the targets, judged as measurements run
 *
 * Each measurement with a target records its verdict here; `main` prints
 * them all in one "Targets" table at the end (and in the JSON).
 *
 * @module
 */
import { fixed, interval, show, table } from "./report.ts";
import type { Spread } from "./stats.ts";

/** The verdicts, collected as measurements run and printed at the end. */
export const verdicts: string[][] = [];

/**
 * Records a target's verdict by the median, as the targets are set, and
 * whether the median's 95 % interval lies wholly on that side: if not, the
 * verdict is within this run's noise, and another run may say otherwise.
 * With too few turns for an interval, the verdict stands alone.
 */
export function verdict(target: string, figure: Spread, limit: number, atLeast: boolean): string {
  const passes = (value: number) => (atLeast ? value >= limit : value <= limit);
  const met = passes(figure.median);
  const known = !Number.isNaN(figure.low);
  const clear = !known || passes(figure.low) === met && passes(figure.high) === met;
  verdicts.push([
    target,
    show(figure, fixed(2)),
    interval(figure),
    (met ? "met" : "missed") + (clear ? "" : ", within noise"),
  ]);
  return met ? "met" : "missed";
}

/** Prints the "Targets" table, if any target was judged. */
export function targetsTable(): void {
  if (verdicts.length) {
    table("Targets", ["target", "median (min–max)", "95 % interval", "verdict"], verdicts);
  }
}
