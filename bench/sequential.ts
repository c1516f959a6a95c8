/**
 * # bench/sequential.ts: one call at a time
 *
 * Sequential fib(1) calls, ours against the raw pairs and a pika loop
 * (`bench/pika.ts`, against `interop/peer_server.py`), in interleaved turns
 * on a quorum and a classic queue: p50 per turn, p99 and mean over all.
 *
 * @module
 */
import { closeAll, contenders, pairRatios, PIKA } from "./contenders.ts";
import type { Lab } from "./lab.ts";
import { interleaved, sequential } from "./loops.ts";
import { PIKA_SEQUENTIAL } from "./pika.ts";
import { runOrThrow } from "./processes.ts";
import { fixed, int, ratioTable, say, show, table } from "./report.ts";
import { PYTHON, QUEUE_TYPES, type QueueType } from "./settings.ts";
import { percentile, type Spread, spread } from "./stats.ts";
import { verdict } from "./verdicts.ts";

/** Sequential calls from the embedded pika loop, in a process of its own; its latencies in ms. */
async function pythonSequential(lab: Lab, queue: string, calls: number): Promise<number[]> {
  const stdout = await runOrThrow("the pika loop", PYTHON, ["-c", PIKA_SEQUENTIAL], 120_000, {
    AMQP_URL: lab.settings.url,
    RPC_QUEUE: queue,
    CALLS: String(calls),
  });
  return JSON.parse(stdout);
}

/** Interleaved sequential turns on one queue type: each turn's latencies, per pair. */
async function sequentialOn(lab: Lab, type: QueueType): Promise<Record<string, number[][]>> {
  const { turns, calls } = lab.settings.plan.sequential;
  const pairs = await contenders(lab, type, ["ours"]);
  try {
    const turnsOf: Record<string, () => Promise<number[]>> = {};
    for (const [name, { call }] of Object.entries(pairs)) {
      await sequential(call, 50); // warm-up
      turnsOf[name] = () => sequential(call, calls);
    }
    if (lab.python.peerServer) {
      const { queue } = await lab.server({ kind: "python", type });
      turnsOf[PIKA] = () => pythonSequential(lab, queue, calls);
    }
    return await interleaved(turns, turnsOf);
  } finally {
    await closeAll(pairs);
  }
}

/** 3. One call at a time: ours, the raw pairs, and the pika pair. */
export async function sequentialLatency(lab: Lab) {
  const { turns, calls } = lab.settings.plan.sequential;
  if (!lab.python.peerServer) say("\n(no Python pair: interop/peer_server.py or pika missing)");
  const rows: string[][] = [];
  const ratios: Record<string, Record<string, Spread>> = {};
  const results: Record<string, unknown> = {};
  for (const type of QUEUE_TYPES) {
    const samples = await sequentialOn(lab, type);
    const p50s: Record<string, number[]> = {};
    for (const [name, perTurn] of Object.entries(samples)) {
      p50s[name] = perTurn.map((turn) => percentile(turn, 50));
      const all = perTurn.flat();
      const mean = all.reduce((sum, ms) => sum + ms, 0) / all.length;
      const p99 = percentile(all, 99);
      rows.push([`${name} (${type})`, show(spread(p50s[name]), fixed(3)), p99.toFixed(3)]);
      rows.at(-1)!.push(mean.toFixed(3), int(1000 / mean));
      results[`${name} (${type})`] = { p50: spread(p50s[name]), p99, mean };
    }
    ratios[type] = pairRatios(p50s);
  }
  table(
    `Sequential fib(1), one server; ms; p50 as median (min–max) of ${turns} interleaved turns ` +
      `of ${calls} calls, p99 and mean over all`,
    ["pair (queue)", "p50", "p99", "mean", "calls/s"],
    rows,
  );
  ratioTable("Sequential ratios of p50, median (min–max) of the per-turn ratios", ratios);
  for (const type of QUEUE_TYPES) {
    const figure = ratios[type]["ours / raw, same features"];
    verdict(`sequential, ${type}: ours / raw same features, p50 <= 1.10`, figure, 1.1, false);
  }
  return { turns, calls, ...results, ratios };
}
