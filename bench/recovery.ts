/**
 * # bench/recovery.ts: how soon an overloaded server answers again
 *
 * A slow server (`bench/child.ts slow-server`, 20 ms of CPU per request) gets
 * a burst of calls with short deadlines, then a fresh call: the time until
 * it is answered, with the server skipping late requests (the default) or not.
 *
 * @module
 */
import { DEADLINE_GRACE_MS, type FibonacciRpcClient } from "../rpc/mod.ts";
import { closeAll, connectOurs } from "./contenders.ts";
import type { Lab, ServerSpec } from "./lab.ts";
import { interleaved, within } from "./loops.ts";
import { fixed, say, show, table } from "./report.ts";
import { PREFETCH } from "./settings.ts";
import { mapValues, ratio, spread } from "./stats.ts";

/** One overload: a burst of short-deadline calls, then the time until a fresh call is answered. */
async function overloadOnce(client: FibonacciRpcClient, burst: number, deadlineMs: number) {
  const calls = Array.from({ length: burst }, () => client.call(1, { timeout: deadlineMs }));
  const outcomes = await within(Promise.allSettled(calls), deadlineMs + 60_000, "a burst");
  const burstEnded = performance.now();
  await client.call(1, { timeout: 60_000 });
  return {
    ms: performance.now() - burstEnded,
    answered: outcomes.filter((o) => o.status === "fulfilled").length,
  };
}

/** 6. Recovery after overload, skipping late requests (the default) or not. */
export async function recovery(lab: Lab) {
  const { turns, burst, deadlineMs, workMs } = lab.settings.plan.recovery;
  const specs: Record<string, ServerSpec> = {
    "skip late requests (default)": { kind: "slow-skip-late", type: "quorum" },
    "compute every request (skipLate: false)": { kind: "slow-no-skip-late", type: "quorum" },
  };
  const clients: Record<string, FibonacciRpcClient> = {};
  try {
    for (const [name, spec] of Object.entries(specs)) {
      clients[name] = await connectOurs(lab, (await lab.server(spec)).queue);
      await clients[name].call(1); // warm-up
    }
    const runs = await interleaved(
      turns,
      mapValues(clients, (client) => () => overloadOnce(client, burst, deadlineMs)),
    );
    const printed: string[] = [];
    for (const spec of Object.values(specs)) printed.push(...await lab.stopServer(spec));
    table(
      `Recovery from overload: ${burst} calls with ${deadlineMs} ms deadlines at once against one ` +
        `server (prefetch ${PREFETCH}, ${workMs} ms of CPU per request, quorum queue), then a ` +
        `fresh call; ms from the burst's end to its answer, median (min–max) of ${turns} turns`,
      ["server", "recovery ms", "burst calls answered"],
      Object.entries(runs).map(([name, list]) => [
        name,
        show(spread(list.map((r) => r.ms)), fixed(1)),
        show(spread(list.map((r) => r.answered))),
      ]),
    );
    const [skipping, computing] = Object.values(runs).map((list) => list.map((r) => r.ms));
    const slower = ratio(computing, skipping);
    say(`\nRecovery, computing every request / skipping late ones: ${show(slower, fixed(1))}`);
    say(
      `(The server skips a request once its deadline is ${DEADLINE_GRACE_MS} ms past, not sooner.)`,
    );
    const counts = printed.map((text) => text.trim().split("\n").at(-1)).join("; ");
    say(`Server counts at exit (answered, skipped): ${counts}`);
    return { turns, burst, deadlineMs, workMs, runs, ratio: slower };
  } finally {
    await closeAll(clients);
  }
}
