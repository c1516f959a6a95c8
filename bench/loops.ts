/**
 * # bench/loops.ts: how calls are made, and turns taken
 *
 * The two call loops every measurement times (pipelined, at some number in
 * flight; sequential, one at a time), the interleaved turns that run every
 * contender once per turn in a rotating order, and a time limit for a promise.
 *
 * @module
 */
import type { Call, QueueType } from "./settings.ts";

/** Rejects if `promise` takes longer than `ms`: no turn may hang the run. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Keeps `concurrency` calls in flight until `calls` are done or `limitMs` passed. */
export async function pipelined(
  call: Call,
  concurrency: number,
  calls: number,
  limitMs = 60_000,
  n: () => number = () => 1,
): Promise<{ callsPerSecond: number; ms: number; calls: number }> {
  let started = 0, done = 0;
  const began = performance.now();
  const deadline = began + limitMs;
  const work = Promise.all(Array.from({ length: concurrency }, async () => {
    while (started < calls && performance.now() < deadline) {
      started++;
      await call(n());
      done++;
    }
  }));
  await within(work, limitMs + 30_000, "a pipelined turn");
  const ms = performance.now() - began;
  return { callsPerSecond: (1000 * done) / ms, ms, calls: done };
}

/** One call at a time; the latency of each in ms. */
export async function sequential(call: Call, calls: number, limitMs = 60_000): Promise<number[]> {
  const samples: number[] = [];
  const deadline = performance.now() + limitMs;
  for (let i = 0; i < calls && performance.now() < deadline; i++) {
    const started = performance.now();
    await within(call(1), 30_000, "a sequential call");
    samples.push(performance.now() - started);
  }
  return samples;
}

/**
 * Runs `turns` turns; in each, every contender once, the order rotating from
 * turn to turn so that none always goes first. Returns each one's results.
 */
export async function interleaved<T>(
  turns: number,
  contenders: Record<string, () => Promise<T>>,
): Promise<Record<string, T[]>> {
  const names = Object.keys(contenders);
  const results: Record<string, T[]> = Object.fromEntries(names.map((name) => [name, []]));
  for (let turn = 0; turn < turns; turn++) {
    for (let i = 0; i < names.length; i++) {
      const name = names[(i + turn) % names.length];
      results[name].push(await contenders[name]());
    }
  }
  return results;
}

/** `measure` on a quorum queue, then on a classic one; the two results by queue type. */
export async function onBothQueueTypes<T>(
  measure: (type: QueueType) => Promise<T>,
): Promise<Record<QueueType, T>> {
  const quorum = await measure("quorum");
  return { quorum, classic: await measure("classic") };
}
