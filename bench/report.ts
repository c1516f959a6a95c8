/**
 * # bench/report.ts: what a run prints
 *
 * Number formats, lines of text (silenced by `--json`), and Markdown tables.
 *
 * @module
 */
import type { Spread } from "./stats.ts";

/** A whole number with thousands separators: 12,345. */
export const int = (value: number) => Math.round(value).toLocaleString("en-US");
/** A formatter with `digits` decimals. */
export const fixed = (digits: number) => (value: number) => value.toFixed(digits);
/** A spread as "median (min–max)". */
export const show = (s: Spread, format = int) =>
  `${format(s.median)} (${format(s.min)}–${format(s.max)})`;
/** A spread's 95 % interval as "low–high", or "too few turns". */
export const interval = (s: Spread) =>
  Number.isNaN(s.low) ? "too few turns" : `${fixed(2)(s.low)}–${fixed(2)(s.high)}`;

let quiet = false; // --json: figures only

/** Silences say() and table() (for `--json`), or not. */
export function setQuiet(on: boolean): void {
  quiet = on;
}

/** Prints a line, unless quiet. */
export function say(line = ""): void {
  if (!quiet) console.log(line);
}

/** A Markdown table: the first column left-aligned, the others right-aligned. */
export function table(title: string, header: string[], rows: string[][]): void {
  const cells = [header, ...rows];
  const widths = header.map((_, i) => Math.max(3, ...cells.map((row) => row[i].length)));
  const line = (row: string[]) =>
    `| ${
      row.map((cell, i) => (i ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))).join(" | ")
    } |`;
  say(`\n${title}\n`);
  say(line(header));
  say(`| ${widths.map((w, i) => (i ? "-".repeat(w - 1) + ":" : "-".repeat(w))).join(" | ")} |`);
  for (const row of rows) say(line(row));
}

/** A table of ratios by queue type. */
export function ratioTable(title: string, ratios: Record<string, Record<string, Spread>>): void {
  table(
    title,
    ["ratio", "quorum queue", "classic queue"],
    Object.keys(ratios.quorum).map((name) => [
      name,
      show(ratios.quorum[name], fixed(2)),
      show(ratios.classic[name], fixed(2)),
    ]),
  );
}
