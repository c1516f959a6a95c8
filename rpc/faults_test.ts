/**
 * Faults, round two: a broker that blocks publishers, a queue that refuses
 * requests, a shutdown with a backlog, a diagnosis that must advise only
 * what it saw, and many calls aborted at once. Each is provoked for real.
 *
 * The blocked-broker test raises a memory alarm on node 1 of the test
 * cluster (never on the shared broker), and needs the cluster as
 * cluster_test.ts does.
 *
 * @module
 */
import assert from "node:assert/strict";
import { fib, FibonacciRpcClient, FibonacciRpcServer, RpcError } from "./mod.ts";
import { CLUSTER_URLS, clusterTests, deleteQueue } from "./_test_cluster.ts";
import { rabbitmqctl } from "./_test_faults.ts";
import {
  BROKER_URL,
  heldHandler,
  openBroker,
  quiet,
  slowHandler,
  startPair,
  waitFor,
} from "./_test_util.ts";

Deno.test("a queue that refuses requests fails those calls alone, with rejected, and the accepted ones get their answers", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: false,
    arguments: { "x-max-length": 5, "x-overflow": "reject-publish" },
  });
  const log: string[] = [];
  await using client = await FibonacciRpcClient.connect({
    url: BROKER_URL,
    queue: broker.queue,
    log: (line) => log.push(line),
  });
  const calls = Array.from({ length: 20 }, (_, n) => client.call(n).catch((error) => error));
  // Only once the broker has said yes or no to each does a server come.
  await waitFor("the refusals", () => client.pendingCalls === 5);
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    ...quiet,
  });
  const outcomes = await Promise.all(calls);
  const answered = outcomes.filter((outcome) => typeof outcome === "bigint");
  const refused = outcomes.filter((outcome) => outcome instanceof RpcError);
  assert.deepEqual(answered, [0n, 1n, 1n, 2n, 3n], "the five the queue took are answered");
  assert.equal(refused.length, 15);
  for (const error of refused) {
    assert.equal(error.code, "rejected");
    assert.match(
      error.message,
      /^fib\(\d+\): the queue "rpc_test\.[^"]+" refused the request \(it is full, or has no leader yet\)$/,
    );
  }
  assert.deepEqual(
    log.filter((line) => /Lost|Connected|Reconnecting/.test(line)),
    [],
    "no reconnection",
  );
});

Deno.test("with retry, a refused request goes out again after a short backoff, on the same connection, until the queue takes it", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: false,
    arguments: { "x-max-length": 5, "x-overflow": "reject-publish" },
  });
  const log: string[] = [];
  await using client = await FibonacciRpcClient.connect({
    url: BROKER_URL,
    queue: broker.queue,
    retry: true,
    timeout: 10_000,
    log: (line) => log.push(line),
  });
  const calls = Array.from({ length: 20 }, (_, n) => client.call(n));
  await waitFor("some refusals", () => log.some((line) => line.includes("refused a request")));
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    ...quiet,
  });
  assert.deepEqual(await Promise.all(calls), Array.from({ length: 20 }, (_, n) => fib(n)));
  assert.deepEqual(
    log.filter((line) => /Lost|Connected|Reconnecting/.test(line)),
    [],
    "no reconnection",
  );
  assert.ok(log.some((line) => /sending it again in \d+ ms/.test(line)));
  const connections = await rabbitmqctl(["list_connections", "client_properties"]).catch(() => "");
  if (connections) {
    const ours = connections.split("\n").filter((line) => line.includes(client.connectionName));
    assert.equal(ours.length, 1, "one connection, never cycled");
  }
});

Deno.test("closing a server with a backlog finishes the request in progress and gives the rest back to the queue at once", async () => {
  const seen: number[] = [];
  await using pair = await startPair({
    handler: slowHandler(200, seen),
    prefetch: 50,
    concurrency: 1,
  });
  const { broker, client, server } = pair;
  const calls = Array.from({ length: 20 }, (_, n) => client.call(n, { timeout: 20_000 }));
  await waitFor(
    "the server to hold the backlog",
    async () => (await broker.messageCount(broker.queue)) === 0 && seen.length >= 1,
  );
  await server.close();
  assert.ok(seen.length <= 2, `close() computed ${seen.length} requests, not the whole backlog`);
  // Nothing is lost: the next server answers every call.
  await using _next = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    ...quiet,
  });
  assert.deepEqual(await Promise.all(calls), Array.from({ length: 20 }, (_, n) => fib(n)));
});

Deno.test("a timed-out call on a queue whose requests expire says they may have expired, and does not say the servers are behind", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: false,
    arguments: { "x-message-ttl": 0 },
  });
  await using server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    ...quiet,
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  // More at once than the idle server's prefetch (50): the rest expire at once in the queue.
  const outcomes = await Promise.allSettled(
    Array.from({ length: 400 }, (_, n) => client.call(n % 90, { timeout: 1_000 })),
  );
  const timeouts = outcomes.flatMap((outcome) =>
    outcome.status === "rejected" ? [outcome.reason as RpcError] : []
  );
  assert.ok(server.answered >= 1, "the server answered what reached it");
  assert.ok(timeouts.length > 0, "some requests expired in the queue");
  for (const error of timeouts) {
    assert.equal(error.code, "timeout");
    assert.equal(error.diagnosis?.cause, "no-answer");
    assert.equal(error.diagnosis?.queued, 0);
    assert.match(error.message, /no request waits in it/);
    assert.match(error.message, /expired in the queue/);
    assert.doesNotMatch(error.message, /overloaded|behind|add servers/);
  }
});

Deno.test("10,000 calls on one abort signal share one listener, and one abort rejects them all with its reason", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, { durable: false }); // nobody consumes it
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const controller = new AbortController();
  const { signal } = controller;
  const listeners = { added: 0, removed: 0 };
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (...args: Parameters<typeof add>) => {
    listeners.added++;
    add(...args);
  };
  signal.removeEventListener = (...args: Parameters<typeof remove>) => {
    listeners.removed++;
    remove(...args);
  };
  const calls = Array.from({ length: 10_000 }, (_, n) => client.call(n % 90, { signal }));
  assert.equal(listeners.added, 1, "one listener for the signal, not one a call");
  const reason = new Error("the user gave up");
  controller.abort(reason);
  const outcomes = await Promise.allSettled(calls);
  assert.ok(
    outcomes.every((outcome) => outcome.status === "rejected" && outcome.reason === reason),
  );
  assert.equal(listeners.removed, 0, "nothing removed while the abort is delivered");
  assert.equal(client.pendingCalls, 0);
});

// ─── A broker that blocks publishers (a memory alarm on a cluster node) ─────

const NODE = "rpc-cluster-1@localhost";
const blockedTest = clusterTests("faults_test.ts");

/** Node 1's memory watermark as set_vm_memory_high_watermark takes it back. */
async function readWatermark(): Promise<string[]> {
  const value = (await rabbitmqctl([
    "-n",
    NODE,
    "eval",
    "vm_memory_monitor:get_vm_memory_high_watermark().",
  ])).trim();
  const absolute = value.match(/^\{absolute,\s*(\d+)\}$/);
  if (absolute) return ["absolute", absolute[1]];
  assert.match(value, /^[\d.]+$/, `a watermark we can restore: ${value}`);
  return [value];
}

Deno.test({
  name:
    "a broker that blocks publishers: a call settles at its deadline saying so, the server logs it once, and all works again when it clears",
  ...blockedTest,
  async fn() {
    const url = CLUSTER_URLS[0];
    const queue = `rpc_test.blocked.${crypto.randomUUID()}`;
    await using _queue = { [Symbol.asyncDispose]: () => deleteQueue(CLUSTER_URLS, queue) };
    const serverLog: string[] = [];
    using held = heldHandler();
    await using _server = await FibonacciRpcServer.start({
      url,
      queue,
      handler: (n) => n === 30 ? held.handler(n) : fib(n),
      log: (line) => serverLog.push(line),
    });
    await using client = await FibonacciRpcClient.connect({ url, queue });
    assert.equal(await client.call(29), 514229n);
    // A request the server holds while the alarm goes up: its reply will have to wait.
    const heldCall = client.call(30, { timeout: 60_000 });
    await waitFor("the server to hold fib(30)", () => held.seen.length === 1);
    const watermark = await readWatermark();
    try {
      await rabbitmqctl(["-n", NODE, "set_vm_memory_high_watermark", "0.00001"]);
      const started = Date.now();
      const error: RpcError = await client.call(31, { timeout: 3_000 }).then(
        () => assert.fail("a blocked broker answered"),
        (error) => error,
      );
      const took = Date.now() - started;
      assert.ok(
        took >= 3_000 && took < 3_300,
        `settled ${took} ms after the call, at its deadline`,
      );
      assert.equal(error.code, "timeout");
      assert.equal(error.diagnosis?.cause, "blocked");
      assert.match(error.diagnosis?.detail ?? "", /memory/);
      assert.match(
        error.message,
        /^fib\(31\): no reply within 3000 ms: the broker is blocking publishers \(.*memory.*\)/,
      );
      held.release(); // the server replies, and the broker blocks it
      await waitFor(
        "the server to see the block",
        () => serverLog.some((line) => line.includes("blocking publishers")),
      );
    } finally {
      await rabbitmqctl(["-n", NODE, "set_vm_memory_high_watermark", ...watermark]);
    }
    assert.equal(await heldCall, 832040n, "the held reply went out once the alarm cleared");
    await waitFor("the unblock", () => serverLog.some((line) => line.includes("unblocked")));
    assert.equal(await client.call(32), 2178309n, "works again, nothing restarted");
    assert.equal(serverLog.filter((line) => line.includes("blocking publishers")).length, 1);
    assert.equal(serverLog.filter((line) => line.includes("unblocked")).length, 1);
  },
});
