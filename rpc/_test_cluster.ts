/**
 * The test cluster of .ci/cluster.sh as the tests use it: its nodes' URLs,
 * stopping, killing and starting nodes, whether the cluster tests run, and a
 * load of calls kept up while a node goes.
 *
 * @module
 */
import assert from "node:assert/strict";
import amqp from "npm:amqplib@2.3.1";
import { fib, FibonacciRpcClient, RpcError } from "./mod.ts";
import { runCommand } from "./_test_process.ts";
import { delay } from "./_test_util.ts";

/** The AMQP URLs of the test cluster's three nodes (.ci/cluster.sh). */
export const CLUSTER_URLS = [5681, 5682, 5683].map((port) =>
  `amqp://guest:guest@127.0.0.1:${port}`
);

/** Runs .ci/cluster.sh (never `start`: the tests use a cluster started before them); returns its last line of output. */
export async function cluster(...args: string[]): Promise<string> {
  const { code, stdout, stderr } = await runCommand("bash", [".ci/cluster.sh", ...args], 240_000);
  if (code !== 0) {
    throw new Error(`cluster.sh ${args.join(" ")}: ${stderr.trim().split("\n").at(-1)}`);
  }
  return stdout.trim().split("\n").at(-1) ?? "";
}

/** Whether something listens on 127.0.0.1:`port`. */
export async function listening(port: number): Promise<boolean> {
  try {
    const connection = await Deno.connect({ hostname: "127.0.0.1", port });
    connection.close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether this run's cluster tests run: `.ci/run` sets `RPC_TEST_CLUSTER=1`
 * after it has started the test cluster itself, so the decision is made
 * once per run, by the run, and a test never touches a cluster its run did
 * not start.
 */
export const CLUSTER_TESTS_RUN = Deno.env.get("RPC_TEST_CLUSTER") === "1";

/**
 * The options of a test that needs the test cluster: ignored unless
 * `RPC_TEST_CLUSTER=1` (saying so once, for `file`).
 */
export function clusterTests(file: string): { ignore: boolean } {
  const ignore = !CLUSTER_TESTS_RUN;
  if (ignore) {
    console.error(
      `${file}: skipping the cluster tests: RPC_TEST_CLUSTER is not 1 ` +
        "(to run them: bash .ci/run, or deno task cluster then RPC_TEST_CLUSTER=1 deno test -A)",
    );
  }
  return { ignore };
}

/** Deletes a queue through the first node that answers. */
export async function deleteQueue(urls: string[], queue: string): Promise<void> {
  for (const url of urls) {
    const connection = await amqp.connect(url).catch(() => undefined);
    if (!connection) continue;
    const channel = await connection.createChannel();
    await channel.deleteQueue(queue);
    await connection.close();
    return;
  }
  throw new Error(`no node answered to delete ${queue}`);
}

/** What {@linkcode load} counted. */
export interface LoadResult {
  right: number;
  wrong: number;
  failures: Map<string, number>;
  /** ms from the client's noticing the loss to the first call that succeeded after it. */
  failover?: number;
}

/**
 * Calls fib(n) from `concurrency` workers, each calling again as soon as its
 * last call settled (50 ms later after a failure, as a careful caller
 * would). After 1,000 calls it runs `fault`; it stops 2,000 calls after the
 * client has noticed the fault (`noticed`), or after 90 s.
 */
export async function load(
  client: FibonacciRpcClient,
  concurrency: number,
  fault: () => Promise<unknown>,
  noticed: () => boolean,
): Promise<LoadResult> {
  const result: LoadResult = { right: 0, wrong: 0, failures: new Map() };
  const until = performance.now() + 90_000;
  let issued = 0;
  let faulting: Promise<unknown> | undefined;
  let noticedAt: number | undefined;
  let stopAt = Infinity;
  async function worker() {
    while (issued < stopAt && performance.now() < until) {
      const n = issued++ % 40;
      if (issued === 1_000) faulting = fault();
      if (noticedAt === undefined && noticed()) {
        [noticedAt, stopAt] = [performance.now(), issued + 2_000];
      }
      try {
        const value = await client.call(n, { timeout: 8_000 });
        if (value === fib(n)) result.right++;
        else result.wrong++;
        if (noticedAt !== undefined) result.failover ??= performance.now() - noticedAt;
      } catch (error) {
        const code = error instanceof RpcError ? error.code : String(error);
        result.failures.set(code, (result.failures.get(code) ?? 0) + 1);
        await delay(50);
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  await faulting;
  assert.ok(noticedAt !== undefined, "the client noticed the fault during the load");
  return result;
}
