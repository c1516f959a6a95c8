/**
 * # bench/prefetch.ts: what the prefetch setting does
 *
 * Two of our servers (`--quiet`) per prefetch setting, on a quorum queue:
 * calls/s for fast work, and the total time of uneven work.
 *
 * @module
 */
import type { FibonacciRpcClient } from "../rpc/mod.ts";
import { closeAll, connectOurs } from "./contenders.ts";
import type { Lab, ServerSpec } from "./lab.ts";
import { interleaved, pipelined } from "./loops.ts";
import { int, show, table } from "./report.ts";
import { mapValues, spread } from "./stats.ts";

/** 7. Prefetch: calls/s for fast work and total time for uneven work, 2 servers. */
export async function prefetch(lab: Lab) {
  const { turns, fast, uneven } = lab.settings.plan.prefetch;
  const values = [1, 10, 50, 250];
  const specs = values.map((p): ServerSpec => ({
    kind: "ours-quiet",
    type: "quorum",
    prefetch: p,
    count: 2,
  }));
  const clients: Record<string, FibonacciRpcClient> = {};
  try {
    for (const [i, spec] of specs.entries()) {
      const client = clients[values[i]] = await connectOurs(lab, (await lab.server(spec)).queue);
      await pipelined((n) => client.call(n), 64, 500); // warm-up
    }
    const runs = await interleaved(
      turns,
      mapValues(clients, (client) => async () => {
        let i = 0;
        const alternate = () => (i++ % 2 === 0 ? 10_000 : 1);
        const call = (n: number) => client.call(n);
        return {
          fast: (await pipelined(call, 256, fast)).callsPerSecond,
          unevenMs: (await pipelined(call, 256, uneven, 60_000, alternate)).ms,
        };
      }),
    );
    table(
      `Prefetch, two of our servers (--quiet), quorum queue, 256 in flight; median (min–max) ` +
        `of ${turns} turn(s): fib(1) calls/s over ${int(fast)} calls, and ms for ${int(uneven)} ` +
        `calls alternating fib(10000) (about 1 ms) and fib(1)`,
      ["prefetch", "fast calls/s", "uneven ms"],
      values.map((p) => [
        String(p),
        show(spread(runs[p].map((r) => r.fast))),
        show(spread(runs[p].map((r) => r.unevenMs))),
      ]),
    );
    return { turns, fast, uneven, runs };
  } finally {
    await closeAll(clients);
    for (const spec of specs) await lab.stopServer(spec);
  }
}
