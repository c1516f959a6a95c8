/**
 * # bench/memory.ts: client memory over many calls
 *
 * Each client (ours, and the raw one with the same features) in a fresh
 * process (`bench/child.ts memory`) makes many pipelined calls on a quorum
 * queue and reports its RSS along the way and its heap after a forced GC.
 *
 * @module
 */
import type { Lab } from "./lab.ts";
import { interleaved } from "./loops.ts";
import { childCommand, runOrThrow } from "./processes.ts";
import { fixed, int, say, show, table } from "./report.ts";
import { mapValues, ratio, spread } from "./stats.ts";
import { verdict } from "./verdicts.ts";

/** One client process doing `calls` pipelined calls; its RSS samples. */
async function memoryRun(lab: Lab, client: string, queue: string) {
  const { calls, concurrency } = lab.settings.plan.memory;
  const config = { mode: "memory", url: lab.settings.url, queue, client, calls, concurrency };
  const [deno, args] = childCommand(config, "--v8-flags=--expose-gc");
  const text = await runOrThrow("memory run", deno, args, 330_000);
  const lines = text.split("\n").map((line) => JSON.parse(line));
  return {
    samples: lines.filter((l) => !l.final) as { calls: number; ms: number; rssMiB: number }[],
    final: lines.find((l) => l.final) as { heapAfterGcMiB: number; pendingCalls: number },
  };
}

/** 4. Client RSS over many pipelined calls, each client in a fresh process. */
export async function memory(lab: Lab) {
  const { turns, calls, concurrency } = lab.settings.plan.memory;
  const queues = {
    ours: (await lab.server({ kind: "ours", type: "quorum" })).queue,
    "raw-full": (await lab.server({ kind: "raw-reply-connection", type: "quorum" })).queue,
  };
  type Client = keyof typeof queues;
  const runs = await interleaved(
    turns,
    mapValues(queues, (queue, client) => () => memoryRun(lab, client, queue)),
  );
  const label = { ours: "ours", "raw-full": "raw, same features" };
  const clients = Object.keys(queues) as Client[];
  const at = (client: Client, i: number, key: "ms" | "rssMiB") =>
    spread(runs[client].map((r) => r.samples[Math.min(i, r.samples.length - 1)][key])).median;
  const rows = runs.ours[0].samples.map(({ calls }, i) => [
    int(calls),
    ...clients.flatMap((c) => [at(c, i, "ms") / 1000, at(c, i, "rssMiB")]).map(fixed(1)),
  ]);
  table(
    `Client RSS over ${int(calls)} pipelined calls at ${concurrency} in flight, quorum queue, ` +
      `each client in a fresh process; MiB, median of ${turns} interleaved run(s)`,
    ["calls done", ...clients.flatMap((c) => [`${label[c]}: s`, "RSS"])],
    rows,
  );
  const heap = (c: Client) => show(spread(runs[c].map((r) => r.final.heapAfterGcMiB)), fixed(1));
  const pending = runs.ours.map((r) => r.final.pendingCalls).join(", ");
  say(`\nHeap after a forced GC at the end (MiB): ours ${heap("ours")}, raw ${heap("raw-full")};`);
  say(`calls still pending in ours: ${pending}.`);
  const finalRss = (c: Client) => runs[c].map((r) => r.samples.at(-1)!.rssMiB);
  const oursOverRaw = ratio(finalRss("ours"), finalRss("raw-full"));
  say(`RSS after ${int(calls)} calls, ours / raw same features: ${show(oursOverRaw, fixed(2))}.`);
  verdict(`memory: ours / raw RSS after ${int(calls)} calls <= 1.2`, oursOverRaw, 1.2, false);
  return { turns, calls, concurrency, runs, oursOverRaw };
}
