/**
 * The failover test: the Fibonacci server and client on the 3-node test
 * cluster of .ci/cluster.sh (AMQP on 127.0.0.1:5681-5683), while nodes stop
 * and crash under load.
 *
 * The test does not start the cluster: `deno task cluster` does (and
 * .ci/run, before the tests). With no cluster it is ignored, saying so once,
 * unless `$CI` is set: then it fails, saying how to start one. It stops,
 * kills and restarts nodes itself, and leaves all three running.
 *
 * Run: `deno task cluster`, then `deno test -A rpc/cluster_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { fib, FibonacciRpcClient, FibonacciRpcServer } from "./mod.ts";
import {
  cluster,
  CLUSTER_URLS,
  clusterTests,
  deleteQueue,
  listening,
  load,
  type LoadResult,
} from "./_test_cluster.ts";
import { FIB_CLIENT, run } from "./_test_process.ts";
import { quiet, slowHandler, waitFor } from "./_test_util.ts";

/** The AMQP ports of the test cluster's nodes 1, 2 and 3. */
const CLUSTER_PORTS = CLUSTER_URLS.map((url) => Number(new URL(url).port));

const { ignore } = clusterTests("cluster_test.ts");

/** A queue of the step's own on the cluster; disposing it deletes it. */
function clusterQueue() {
  const name = `rpc_test.cluster.${crypto.randomUUID()}`;
  return { name, [Symbol.asyncDispose]: () => deleteQueue(CLUSTER_URLS, name) };
}

/** Starts node `k` again, if it is down (the test must leave all three running). */
async function restartNode(k: number) {
  await cluster("start-node", String(k)); // a no-op for a running node
}

/** Fails, saying how to start it, unless all three nodes of the test cluster listen. */
async function assertClusterRunning() {
  const down = [];
  for (const port of CLUSTER_PORTS) if (!(await listening(port))) down.push(port);
  assert.ok(
    down.length === 0,
    `the test cluster is not running${
      down.length < 3 ? ` on 127.0.0.1:${down.join(", ")}` : ""
    }; start it with: deno task cluster`,
  );
}

/** Two servers on `urls` and a client whose log lines are kept, on a queue of its own. */
async function clusterPair(urls: string[], log: (line: string) => void, retry = false) {
  await using stack = new AsyncDisposableStack(); // what is started so far, if a start fails
  const queue = stack.use(clusterQueue());
  // One after the other: RabbitMQ 3.10 can fail a second consume on a brand-new quorum queue.
  const first = stack.use(await FibonacciRpcServer.start({ url: urls, queue: queue.name, log }));
  const second = stack.use(await FibonacciRpcServer.start({ url: urls, queue: queue.name, log }));
  const clientLines: string[] = [];
  const client = stack.use(
    await FibonacciRpcClient.connect({
      url: urls,
      queue: queue.name,
      log: (line) => clientLines.push(line),
      retry,
    }),
  );
  const started = stack.move();
  return {
    servers: [first, second],
    client,
    /** Whether the client has said it lost its connection. */
    lost: () => clientLines.some((line) => line.includes("Lost")),
    [Symbol.asyncDispose]: () => started.disposeAsync(),
  };
}

/** What a load run saw, as one indented line of the test's output. */
function report(result: LoadResult, extra = "") {
  console.log(
    `    ${result.right} right, ${result.wrong} wrong, failures ${
      JSON.stringify([...result.failures])
    }${extra}`,
  );
}

async function failFast(urls: string[]) {
  const lines: string[] = [];
  await using pair = await clusterPair(urls, (line) => lines.push(line));
  const { client, servers: [first, second] } = pair;
  const result = await load(client, 40, () => cluster("kill-node", "1"), pair.lost);
  report(result, `, failover ${result.failover?.toFixed(0)} ms`);
  assert.equal(result.wrong, 0);
  assert.equal(client.pendingCalls, 0, "every call settled");
  for (const code of result.failures.keys()) {
    // rejected: a publish the queue refused while its new leader was chosen.
    assert.ok(["connection-lost", "rejected", "timeout"].includes(code), `failure code ${code}`);
  }
  assert.ok((result.failures.get("connection-lost") ?? 0) > 0, "the node loss was felt");
  assert.ok(
    result.failover !== undefined && result.failover < 10_000,
    `failover ${result.failover} ms`,
  );
  assert.ok(
    lines.some((line) => /Connected to amqp:\/\/guest:\*\*\*@127\.0\.0\.1:568[23]/.test(line)),
    "the servers say which node they are on now",
  );
  assert.ok(first.answered > 0 && second.answered > 0);
  // Both servers answer on a surviving node.
  const after = await Promise.all(
    Array.from({ length: 20 }, (_, n) => client.call(n, { timeout: 5_000 })),
  );
  assert.deepEqual(after, Array.from({ length: 20 }, (_, n) => fib(n)));
}

async function noFailureWithRetry(urls: string[]) {
  const order = [urls[1], urls[2], urls[0]]; // all on node 2 first
  await using pair = await clusterPair(order, () => {}, true);
  const result = await load(pair.client, 40, () => cluster("stop-node", "2"), pair.lost);
  report(result);
  assert.equal(result.wrong, 0);
  assert.deepEqual([...result.failures], [], "no call failed");
  assert.ok(result.right >= 3_000);
  assert.equal(pair.client.pendingCalls, 0);
}

async function repliesToADeadNode(urls: string[]) {
  await using queue = clusterQueue();
  const serverLines: string[] = [];
  const seen: number[] = [];
  const options = {
    url: urls,
    queue: queue.name,
    handler: slowHandler(200, seen),
    log: (line: string) => serverLines.push(line),
  };
  await using _first = await FibonacciRpcServer.start(options);
  await using _second = await FibonacciRpcServer.start(options);
  // A caller on node 3 whose replies come by direct reply-to, and a
  // caller on node 1 with the tutorial's callback queue.
  const doomed = await FibonacciRpcClient.connect({
    url: urls[2],
    queue: queue.name,
    replyQueue: "direct",
  });
  await using survivor = await FibonacciRpcClient.connect({ url: urls[0], queue: queue.name });
  const doomedCalls = Promise.allSettled(
    Array.from({ length: 10 }, (_, n) => doomed.call(n, { timeout: 60_000 })),
  );
  await waitFor("the servers to hold the doomed calls", () => seen.length >= 2);
  await cluster("kill-node", "3");
  const outcomes = await doomedCalls;
  assert.ok(outcomes.some((outcome) => outcome.status === "rejected"));
  await doomed.close();
  // The servers finish the doomed requests (their replies go nowhere), and answer the survivor.
  await waitFor("the doomed requests to be done", () => seen.length >= 10, 30_000);
  const results = await Promise.all(
    Array.from({ length: 10 }, (_, n) => survivor.call(n + 10, { timeout: 20_000 })),
  );
  assert.deepEqual(results, Array.from({ length: 10 }, (_, n) => fib(n + 10)));
  const crashes = serverLines.filter((line) =>
    line.includes("(reply connection)") && line.includes("Lost")
  );
  console.log(`    the reply connections were lost ${crashes.length} times: ${crashes[0] ?? ""}`);
  assert.ok(
    !serverLines.some((line) => line.includes("Lost") && !line.includes("(reply connection)")),
    `the consuming connections stayed up: ${serverLines.join("\n")}`,
  );
}

async function commandLineWithThreeUrls(urls: string[]) {
  await using queue = clusterQueue();
  await using _server = await FibonacciRpcServer.start({ url: urls, queue: queue.name, ...quiet });
  const { code, stdout, stderr } = await run(FIB_CLIENT, [
    ...urls.flatMap((url) => ["--url", url]),
    "--queue",
    queue.name,
    "30",
  ]);
  assert.equal(stderr, "");
  assert.equal(stdout, " [x] Requesting fib(30)\n [.] Got 832040\n");
  assert.equal(code, 0);
}

Deno.test({
  name: "on a 3-node cluster, the pair fails over when the node it is on stops",
  ignore,
  async fn(t) {
    await assertClusterRunning();
    const steps: [string, (urls: string[]) => Promise<void>, number][] = [
      [
        "fail-fast: calls in flight fail with connection-lost, then succeed again on another node",
        failFast,
        1,
      ],
      ["with retry on, no call fails when the node goes", noFailureWithRetry, 2],
      [
        "replies to direct reply-to callers on a dead node do not take the servers down",
        repliesToADeadNode,
        3,
      ],
      ["one command-line call with three --url flags answers", commandLineWithThreeUrls, 0],
    ];
    try {
      for (const [name, step, node] of steps) {
        await t.step(name, () => step(CLUSTER_URLS));
        if (node) await restartNode(node); // the node the step stopped or killed
      }
    } finally {
      // Whatever failed, the cluster is left as it was found: all three nodes up.
      for (const k of [1, 2, 3]) await restartNode(k);
    }
  },
});
