/**
 * # bench/settings.ts: what a benchmark run measures, and how much of it
 *
 * The names of the measurements, the plan (turns and calls of each, full or
 * `--quick`), the settings read from the command line, and the few constants
 * and types every measurement shares.
 *
 * @module
 */
import { DEFAULT_PREFETCH } from "../rpc/mod.ts";

/** The repository's root: every process the benchmark starts runs there. */
export const ROOT = new URL("..", import.meta.url).pathname;
/** Debian's Python, which python3-pika installs into. */
export const PYTHON = "/usr/bin/python3";
/** The prefetch every server gets unless a measurement says otherwise. */
export const PREFETCH = DEFAULT_PREFETCH;
/** The measurements, in the order a run makes them. */
export const MEASUREMENTS = [
  "throughput",
  "own-code",
  "sequential",
  "memory",
  "cold",
  "recovery",
  "prefetch",
  "tracing",
  "rabbitmq-client",
] as const;
/** The name of one measurement, as `--only` takes it. */
export type Measurement = typeof MEASUREMENTS[number];

/** The two queue types the measurements run on. */
export type QueueType = "quorum" | "classic";
/** Both queue types, quorum first, in the order the measurements run them. */
export const QUEUE_TYPES = ["quorum", "classic"] as const;

/** One call of fib(n), however a contender makes it. */
export type Call = (n: number) => Promise<unknown>;
/** A connected client: its call, and how to close it. */
export interface Contender {
  call: Call;
  close(): Promise<void>;
}

/** How much of everything a run does; `--quick` takes the small column. */
export function plan(quick: boolean) {
  const pick = (full: number, small: number) => (quick ? small : full);
  return {
    throughput: { turns: pick(13, 5), calls: pick(1_500, 800), concurrency: 256 },
    ownCode: { turns: pick(25, 7), calls: pick(3_000, 1_000) },
    sequential: { turns: pick(9, 3), calls: pick(200, 100) },
    memory: { turns: pick(2, 1), calls: pick(100_000, 20_000), concurrency: 256 },
    cold: { turns: pick(10, 4) },
    recovery: { turns: pick(5, 2), burst: 600, deadlineMs: 300, workMs: 20 },
    prefetch: { turns: pick(3, 1), fast: pick(2_000, 1_000), uneven: pick(500, 300) },
    rabbitmqClient: {
      turns: pick(9, 3),
      calls: pick(1_500, 600),
      sequentialCalls: pick(200, 100),
      ioCalls: pick(2_000, 500),
      /** An I/O-bound turn starts no call after this; ours ran 88 calls/s before issue 25. */
      ioLimitMs: pick(3_000, 1_500),
      delayMs: 10,
      concurrency: 50,
    },
    tracing: {
      turns: pick(13, 5),
      calls: pick(3_000, 1_000),
      warmup: pick(1_000, 500),
      concurrency: 256,
      microIterations: 1_000_000,
      microRounds: pick(7, 3),
    },
  };
}

/** What the command line asked for. */
export interface Settings {
  url: string;
  quick: boolean;
  json: boolean;
  python: boolean;
  only: Measurement[];
  plan: ReturnType<typeof plan>;
}
