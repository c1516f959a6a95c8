/**
 * # bench/throughput.ts: calls/s at 256 in flight, and what our own code costs
 *
 * `throughput` runs ours (both layers) against every raw pair in interleaved
 * turns, on a quorum and a classic queue, with the CPU each pair's client,
 * server and broker spent; `ownCode` runs ours against the raw pair that
 * differs from it only by our code, the two alone, for a tighter figure.
 *
 * @module
 */
import { tracingEnabled } from "../rpc/_tracing.ts";
import {
  closeAll,
  COALESCED,
  contenders,
  GENERIC,
  OURS,
  ours,
  type Pair,
  pairRatios,
  RAW_PAIRS,
} from "./contenders.ts";
import type { Cpu, Lab } from "./lab.ts";
import { interleaved, onBothQueueTypes, pipelined } from "./loops.ts";
import { rawClient } from "./raw.ts";
import { fixed, int, interval, ratioTable, say, show, table } from "./report.ts";
import { PREFETCH, QUEUE_TYPES, type QueueType } from "./settings.ts";
import { mapValues, ratio, spread } from "./stats.ts";
import { tracingHere } from "./tracing.ts";
import { verdict } from "./verdicts.ts";

/** CPU ms over a contender's turns, and the calls they made. */
export type CpuTotal = Cpu & { calls: number };

/** The CPU `total` spent per call on `key`'s side, in µs, as text. */
export const perCall = (total: CpuTotal, key: keyof Cpu) => int((1000 * total[key]) / total.calls);

/**
 * One pipelined turn, adding the CPU that client, server and broker spent to
 * `total`; it stops starting calls after `calls` or `limitMs`, whichever first.
 */
export async function cpuTurn(
  lab: Lab,
  pair: Pair,
  total: CpuTotal,
  calls: number,
  limitMs?: number,
): Promise<number> {
  const { concurrency } = lab.settings.plan.throughput;
  const pids = pair.server.children.map((child) => child.pid);
  const before = await lab.cpu(pids);
  const turn = await pipelined(pair.call, concurrency, calls, limitMs);
  const after = await lab.cpu(pids);
  for (const key of ["client", "server", "broker"] as const) total[key] += after[key] - before[key];
  total.calls += turn.calls;
  return turn.callsPerSecond;
}

/** A warm-up of `warmup` calls per pair, then interleaved turns: calls/s per turn, CPU totals. */
async function cpuTurns(
  lab: Lab,
  pairs: Record<string, Pair>,
  { turns, calls, warmup }: { turns: number; calls: number; warmup: number },
) {
  for (const { call } of Object.values(pairs)) await pipelined(call, 256, warmup);
  const cpu = mapValues(pairs, (): CpuTotal => ({ client: 0, server: 0, broker: 0, calls: 0 }));
  const rates = await interleaved(
    turns,
    mapValues(pairs, (pair, name) => () => cpuTurn(lab, pair, cpu[name], calls)),
  );
  return { rates, cpu };
}

/** Interleaved throughput turns on one queue type: calls/s per turn, and CPU totals. */
async function throughputOn(lab: Lab, type: QueueType) {
  const { turns, calls } = lab.settings.plan.throughput;
  const pairs = await contenders(lab, type, ["ours", "ours-quiet", "generic"]);
  try {
    const { rates, cpu } = await cpuTurns(lab, pairs, {
      turns,
      calls,
      warmup: Math.min(calls, 2_000),
    });
    const lines = async (name: string) =>
      (await Deno.readTextFile(pairs[name].server.log!).catch(() => "")).split("\n").length - 1;
    return { rates, cpu, logLines: { ours: await lines(OURS), generic: await lines(GENERIC) } };
  } finally {
    await closeAll(pairs);
  }
}

/** "N and M": how many lines our two servers (Fibonacci, generic) logged. */
const logLines = ({ logLines }: { logLines: { ours: number; generic: number } }) =>
  `${int(logLines.ours)} and ${int(logLines.generic)}`;

/** 1. Calls/s at 256 in flight: ours against raw pairs with and without each feature. */
export async function throughput(lab: Lab) {
  const { turns, calls, concurrency } = lab.settings.plan.throughput;
  const both = await onBothQueueTypes((type) => throughputOn(lab, type));
  const { quorum, classic } = both;
  const ratios = mapValues(both, ({ rates }) => pairRatios(rates));
  table(
    `Throughput, fib(1), ${concurrency} calls in flight, one server, prefetch ${PREFETCH}; ` +
      `calls/s, median (min–max) of ${turns} interleaved turns of ${int(calls)} calls`,
    ["client → server", "quorum queue", "classic queue"],
    Object.keys(quorum.rates).map((name) => [
      name,
      show(spread(quorum.rates[name])),
      show(spread(classic.rates[name])),
    ]),
  );
  ratioTable("Throughput ratios, median (min–max) of the per-turn ratios", ratios);
  const cpuCells = (total: CpuTotal) =>
    (["client", "server", "broker"] as const).map((key) => perCall(total, key));
  table(
    "CPU per call in µs, over all turns: client (this process), server (its process), " +
      "broker (the RabbitMQ node, which anything else using it also loads)",
    [
      "client → server",
      "quorum: client",
      "server",
      "broker",
      "classic: client",
      "server",
      "broker",
    ],
    Object.keys(quorum.cpu).map((name) => [
      name,
      ...cpuCells(quorum.cpu[name]),
      ...cpuCells(classic.cpu[name]),
    ]),
  );
  say(`\n"Same features": requests on a confirm channel with mandatory, expiration and`);
  say(`x-deadline; replies on a second server connection. Ours: rpc/fib_server.ts and`);
  say(`FibonacciRpcClient; generic: bench/generic_server.ts (RpcServer) and RpcClient.`);
  say(`Our servers' stdout went to files: ${logLines(quorum)} lines (Fibonacci, generic) on`);
  say(`the quorum queue, ${logLines(classic)} on the classic one.`);
  say(tracingEnabled() ? tracingHere() : "Tracing off in every row: OTEL_DENO unset everywhere.");
  for (const type of QUEUE_TYPES) {
    const figure = ratios[type]["ours / raw, same features"];
    verdict(`throughput, ${type}: ours / raw same features >= 0.95`, figure, 0.95, true);
  }
  return {
    turns,
    calls,
    concurrency,
    prefetch: PREFETCH,
    ratios,
    ...mapValues(both, ({ rates, cpu }) => ({ callsPerSecond: rates, cpu })),
  };
}

/** Alternating turns of ours and of the raw pair that differs from it only by our code. */
async function ownCodeOn(lab: Lab, type: QueueType) {
  const { turns, calls } = lab.settings.plan.ownCode;
  const { server: rawKind, ...features } = RAW_PAIRS[COALESCED];
  const oursServer = await lab.server({ kind: "ours", type });
  const rawServer = await lab.server({ kind: rawKind, type });
  const pairs: Record<string, Pair> = {
    [OURS]: { ...await ours(lab, oursServer.queue), server: oursServer },
    [COALESCED]: {
      ...await rawClient({ url: lab.settings.url, queue: rawServer.queue, ...features }),
      server: rawServer,
    },
  };
  try {
    const { rates, cpu } = await cpuTurns(lab, pairs, { turns, calls, warmup: 2_000 });
    return { rates, cpu, ratio: ratio(rates[OURS], rates[COALESCED]) };
  } finally {
    await closeAll(pairs);
  }
}

/**
 * 2. What our own code costs: ours against the raw pair with the same
 * features and the same write coalescing, the two alone, in many short
 * alternating turns, for a tighter figure than the nine-way table's.
 */
export async function ownCode(lab: Lab) {
  const { turns, calls } = lab.settings.plan.ownCode;
  const { concurrency } = lab.settings.plan.throughput;
  const both = await onBothQueueTypes((type) => ownCodeOn(lab, type));
  table(
    `Our own code: ours against "${COALESCED}", the two alone, ${turns} alternating turns of ` +
      `${int(calls)} calls at ${concurrency} in flight; calls/s and per-turn ratio, median ` +
      `(min–max); CPU per call in µs over all turns`,
    [
      "queue",
      "ours",
      "raw",
      "ours / raw",
      "95 % interval",
      "client: ours",
      "raw",
      "server: ours",
      "raw",
    ],
    Object.entries(both).map(([type, { rates, cpu, ratio }]) => [
      type,
      show(spread(rates[OURS])),
      show(spread(rates[COALESCED])),
      show(ratio, fixed(2)),
      interval(ratio),
      perCall(cpu[OURS], "client"),
      perCall(cpu[COALESCED], "client"),
      perCall(cpu[OURS], "server"),
      perCall(cpu[COALESCED], "server"),
    ]),
  );
  for (const [type, { ratio }] of Object.entries(both)) {
    verdict(`own code, ${type}: ours / raw same features, coalesced >= 0.95`, ratio, 0.95, true);
  }
  return {
    turns,
    calls,
    concurrency,
    ...mapValues(both, ({ rates, cpu }) => ({ callsPerSecond: rates, cpu })),
  };
}
