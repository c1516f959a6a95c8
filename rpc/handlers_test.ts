/**
 * Tests of the server's handler model against a real broker: handlers that
 * run many at once, their RequestContext, the caller's deadline and
 * `handlerTimeout` aborting their signal, `close()` with a hung handler,
 * handlers that throw anything, a lost channel under a running handler, and
 * the broker's `consumer_timeout` closing the channel under a hung handler.
 * A server whose clock runs ahead: deadlines_test.ts.
 *
 * Run: `deno test -A rpc/handlers_test.ts`. The consumer_timeout test runs on the test cluster (RPC_TEST_CLUSTER=1, see
 * rpc/_test_cluster.ts), where it shortens the timeout of node 1 for a
 * while and restores it.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  fib,
  FibonacciRpcClient,
  FibonacciRpcServer,
  type RequestContext,
  RpcClient,
  RpcError,
  RpcServer,
} from "./mod.ts";
import { CLUSTER_URLS, clusterTests, deleteQueue } from "./_test_cluster.ts";
import { rabbitmqctl } from "./_test_faults.ts";
import { BROKER_URL, delay, openBroker, startLoggedServer, waitFor } from "./_test_util.ts";
import { loginUser } from "./_urls.ts";

const decoder = new TextDecoder();

Deno.test("up to concurrency handlers run at once, finish in any order, and each reply matches its call", async () => {
  await using broker = await openBroker();
  let running = 0;
  let most = 0;
  await using server = await startLoggedServer(broker, async (request) => {
    running++;
    most = Math.max(most, running);
    const ms = Number(decoder.decode(request));
    await delay(ms); // later requests wait less: they finish first
    running--;
    return `waited ${ms}`;
  }, { concurrency: 8, log: null });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const waits = Array.from({ length: 40 }, (_, i) => 400 - i * 10);
  const started = performance.now();
  const replies = await Promise.all(waits.map((ms) => client.call(server.queue, String(ms))));
  const took = performance.now() - started;
  assert.deepEqual(
    replies.map((reply) => decoder.decode(reply)),
    waits.map((ms) => `waited ${ms}`),
  );
  assert.equal(most, 8, "eight at once, never more");
  // One at a time would take the sum of the waits, 8.2 s; eight at once about a fifth of it.
  assert.ok(took < 5_000, `${took.toFixed(0)} ms`);
  assert.equal(server.answered, 40);
  assert.equal(client.droppedReplies, 0);
});

Deno.test("concurrency defaults to prefetch; a prefetch below concurrency is refused", async () => {
  await using broker = await openBroker();
  let running = 0;
  let most = 0;
  const { promise: release, resolve } = Promise.withResolvers<void>();
  await using server = await startLoggedServer(broker, async () => {
    most = Math.max(most, ++running);
    await release;
    running--;
    return "ok";
  }, { prefetch: 5, log: null });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const calls = Array.from({ length: 7 }, () => client.call(server.queue, "x"));
  await waitFor("five handlers to run", () => running === 5);
  await delay(200); // time for a sixth, were it allowed
  assert.equal(most, 5);
  resolve();
  await Promise.all(calls);
  const options = { queue: "unused", handler: () => "", prefetch: 2, concurrency: 3 };
  await assert.rejects(RpcServer.start(options), {
    name: "RangeError",
    message: "prefetch (2) must be at least concurrency (3): " +
      "the broker hands over at most prefetch requests at once",
  });
});

Deno.test("the context carries the caller's headers, user, redelivered flag, deadline and correlation id", async () => {
  await using broker = await openBroker();
  const contexts: RequestContext[] = [];
  await using server = await startLoggedServer(broker, (_request, context) => {
    contexts.push(context);
    return "ok";
  });
  const traced: string[] = [];
  await using client = await RpcClient.connect({
    url: BROKER_URL,
    trace: (line) => traced.push(line),
  });
  const before = Date.now();
  await client.call(server.queue, "x", { timeout: 5_000, headers: { tenant: "acme", n: 7 } });
  const after = Date.now();
  const [context] = contexts;
  assert.equal(context.queue, server.queue);
  assert.equal(context.headers.tenant, "acme");
  assert.equal(context.headers.n, 7);
  assert.equal(context.headers["x-timeout-ms"] as number <= 5_000, true);
  assert.equal(context.userId, loginUser([new URL(BROKER_URL)]));
  assert.equal(context.userId, new URL(BROKER_URL).username || "guest");
  assert.equal(context.redelivered, false);
  assert.ok(
    context.deadline! >= before + 4_900 && context.deadline! <= after + 5_000,
    `${context.deadline! - before} ms ahead`,
  );
  assert.match(context.correlationId, /^[0-9a-f-]{36}$/);
  const sent = traced[0].match(/correlation_id (\w{8})/)?.[1];
  assert.equal(context.correlationId.slice(0, 8), sent);
  assert.equal(context.signal.aborted, false);
  // A request from another tutorial client: no headers, no user, no deadline.
  const { queue: replyTo, replies } = await broker.replyQueue();
  broker.channel.sendToQueue(server.queue, Buffer.from("x"), { replyTo, correlationId: "plain" });
  await waitFor("the reply", () => replies.length === 1);
  const plain = contexts[1];
  assert.deepEqual(
    [plain.correlationId, plain.headers, plain.userId, plain.deadline],
    ["plain", {}, undefined, undefined],
  );
});

Deno.test("a handler's signal aborts at its caller's 400 ms deadline, whenever the handler first reads it", async () => {
  await using broker = await openBroker();
  const started = performance.now();
  const aborts: Promise<{ at: number; reason: unknown }>[] = [];
  await using server = await startLoggedServer(broker, async (request, context) => {
    await delay(Number(decoder.decode(request))); // reads its signal only then
    const { promise, resolve } = Promise.withResolvers<{ at: number; reason: unknown }>();
    aborts.push(promise);
    const signal = context.signal;
    signal.addEventListener(
      "abort",
      () => resolve({ at: performance.now(), reason: signal.reason }),
    );
    if (signal.aborted) resolve({ at: performance.now(), reason: signal.reason });
    await promise;
    throw signal.reason; // as fetch() does
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const calls = ["0", "200", "600"].map((ms) => client.call(server.queue, ms, { timeout: 400 }));
  for (const call of calls) await assert.rejects(call, { code: "timeout" });
  await waitFor("the replies nobody reads", () => server.answered === 3);
  for (const abort of aborts) {
    const { at, reason } = await abort;
    assert.ok(at - started > 250 && at - started < 2_000, `aborted after ${at - started} ms`);
    assert.ok(reason instanceof DOMException && reason.name === "TimeoutError");
    assert.equal(reason.message, "the caller's deadline passed");
  }
  assert.ok(server.logged.includes(
    " [!] Handler stopped: the caller's deadline passed before the handler finished",
  ));
});

Deno.test("a handler that ignores its signal loses its slot at handlerTimeout: its caller gets handler-timeout, the next call is answered, its late result is dropped", async () => {
  await using broker = await openBroker();
  const { promise: hang, resolve: finish } = Promise.withResolvers<string>();
  let signal: AbortSignal | undefined;
  await using server = await startLoggedServer(broker, (request, context) => {
    if (decoder.decode(request) !== "hang") return "answered";
    signal = context.signal;
    return hang; // ignores its signal
  }, { concurrency: 1, handlerTimeout: 300 });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const started = performance.now();
  await assert.rejects(client.call(server.queue, "hang", { timeout: 10_000 }), {
    name: "RpcError",
    code: "handler-timeout",
    message: "the handler ran out of time (handlerTimeout 300 ms)",
  });
  const took = performance.now() - started;
  assert.ok(took < 2_000, `the caller heard after ${took.toFixed(0)} ms, not at its deadline`);
  assert.equal(signal?.aborted, true);
  assert.equal((signal?.reason as DOMException).name, "TimeoutError");
  // The only slot is free again, though the handler still runs.
  assert.equal(
    decoder.decode(await client.call(server.queue, "next", { timeout: 2_000 })),
    "answered",
  );
  finish("too late");
  await delay(300); // time for a late reply, were one sent
  assert.equal(client.droppedReplies, 0, "no late reply");
  assert.equal(server.answered, 2);
  await server.close();
  assert.equal(await broker.messageCount(server.queue), 0, "both acked");
});

Deno.test("close() with a hung handler returns after closeTimeout, aborts its signal, and gives its request to the next server, marked redelivered", async () => {
  await using broker = await openBroker();
  const queue = broker.newQueue();
  let signal: AbortSignal | undefined;
  const hung = await RpcServer.start({
    url: BROKER_URL,
    queue,
    handler: (_request, context) => {
      signal = context.signal;
      return new Promise<string>(() => {}); // never settles
    },
    closeTimeout: 500,
    log: null,
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const call = client.call(queue, "x", { timeout: 15_000 });
  await waitFor("the handler to run", () => signal !== undefined);
  const started = performance.now();
  await hung.close();
  const took = performance.now() - started;
  assert.ok(took >= 450 && took < 3_000, `close() took ${took.toFixed(0)} ms`);
  assert.equal(signal?.aborted, true);
  assert.equal((signal?.reason as DOMException).message, "the server is closing");
  let redelivered: boolean | undefined;
  await using _next = await RpcServer.start({
    url: BROKER_URL,
    queue,
    handler: (_request, context) => (redelivered = context.redelivered, "from the next server"),
    log: null,
  });
  assert.equal(decoder.decode(await call), "from the next server");
  assert.equal(redelivered, true);
});

Deno.test("whatever a handler throws, sync or async (no prototype, a Symbol, undefined, null), its caller gets an error reply and the server goes on", async () => {
  await using broker = await openBroker();
  const values: Record<string, () => unknown> = {
    "no prototype": () => Object.create(null),
    "a symbol": () => Symbol("odd"),
    "undefined": () => undefined,
    "null": () => null,
    "a throwing proxy": () =>
      new Proxy({}, {
        get: () => {
          throw new Error("no");
        },
      }),
  };
  await using server = await startLoggedServer(broker, (request) => {
    const [how, what] = decoder.decode(request).split(":");
    if (how === "ok") return "fine";
    const value = values[what]();
    if (how === "sync") throw value;
    return Promise.reject(value);
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  for (const how of ["sync", "async"]) {
    for (const what of Object.keys(values)) {
      await assert.rejects(client.call(server.queue, `${how}:${what}`), (error: RpcError) => {
        assert.equal(error.code, "internal", `${how} ${what}`);
        assert.match(error.message, /^internal error \(id \w{8}\)$/);
        return true;
      });
    }
  }
  // A handler that returns something that is no reply is an internal error too.
  await using other = await startLoggedServer(broker, () => 42 as unknown as string);
  await assert.rejects(client.call(other.queue, "x"), { code: "internal" });
  assert.equal(decoder.decode(await client.call(server.queue, "ok")), "fine");
  assert.equal(server.answered, 11);
  assert.ok(
    server.logged.some((line) => /Handler failed \(id \w+\): thrown \[object Object\]/.test(line)),
  );
  assert.ok(server.logged.some((line) => line.endsWith("): Symbol(odd)")));
});

Deno.test("a handler written for one argument works unchanged, in both layers", async () => {
  await using broker = await openBroker();
  const upper = (request: Uint8Array) => decoder.decode(request).toUpperCase();
  await using server = await startLoggedServer(broker, upper);
  await using client = await RpcClient.connect({ url: BROKER_URL });
  assert.equal(decoder.decode(await client.call(server.queue, "abc")), "ABC");
  const oldFib = (n: number) => fib(n) + 1n;
  const queue = broker.newQueue();
  await using _fibonacci = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue,
    handler: oldFib,
    log: null,
  });
  await using fibonacci = await FibonacciRpcClient.connect({ url: BROKER_URL, queue });
  assert.equal(await fibonacci.call(10), 56n);
});

Deno.test("after the broker closes the channel under a hung handler, the slots start clean and the server answers again", async () => {
  await using broker = await openBroker();
  let signal: AbortSignal | undefined;
  await using server = await startLoggedServer(broker, (request, context) => {
    if (decoder.decode(request) !== "hang") return "answered";
    signal = context.signal;
    return new Promise<string>(() => {}); // holds the only slot for good
  }, { concurrency: 1 });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const hung = client.call(server.queue, "hang", { timeout: 1_000 });
  hung.catch(() => {});
  await waitFor("the handler to run", () => signal !== undefined);
  // Deleting the queue cancels the consumer: the server drops the channel and consumes anew.
  await broker.channel.deleteQueue(server.queue);
  await waitFor(
    "the server to consume again",
    () => server.logged.filter((line) => line === " [x] Awaiting RPC requests").length === 2,
  );
  assert.equal(signal?.aborted, true, "the lost request's signal aborted");
  assert.equal(
    decoder.decode(await client.call(server.queue, "next", { timeout: 3_000 })),
    "answered",
  );
});

/** Node 1 of the test cluster, as rabbitmqctl names it (.ci/cluster.sh). */
const NODE_1 = "rpc-cluster-1@localhost";

/** Runs an Erlang expression on node 1 of the test cluster; its printed result. */
async function onNode1(expression: string): Promise<string> {
  return (await rabbitmqctl(["-n", NODE_1, "eval", expression], 30_000)).trim();
}

/**
 * Sets `key` of the rabbit application on node 1 for the test's time:
 * disposing it restores the value read first.
 */
async function setOnNode1(key: string, value: number) {
  const before = await onNode1(`application:get_env(rabbit, ${key}).`);
  const old = before.match(/^\{ok,(\d+)\}$/)?.[1];
  await onNode1(`application:set_env(rabbit, ${key}, ${value}).`);
  return {
    [Symbol.asyncDispose]: async () =>
      void await onNode1(
        old === undefined
          ? `application:unset_env(rabbit, ${key}).`
          : `application:set_env(rabbit, ${key}, ${old}).`,
      ),
  };
}

Deno.test({
  name:
    "when the broker's consumer_timeout closes the channel under a hung handler, the server consumes again and answers",
  ...clusterTests("handlers_test.ts"),
  async fn() {
    const url = CLUSTER_URLS[0];
    const queue = `rpc_test.cluster.${crypto.randomUUID()}`;
    // Read by each new channel: 3 s to ack, checked every second (60 s by default).
    await using _timeout = await setOnNode1("consumer_timeout", 3_000);
    await using _tick = await setOnNode1("channel_tick_interval", 1_000);
    let signal: AbortSignal | undefined;
    const logged: string[] = [];
    try {
      await using server = await RpcServer.start({
        url,
        queue,
        concurrency: 1,
        handler: (request, context) => {
          if (decoder.decode(request) !== "hang") return "answered";
          signal = context.signal;
          return new Promise<string>(() => {}); // never settles, never acks
        },
        log: (line) => logged.push(line),
      });
      await using client = await RpcClient.connect({ url });
      const hung = client.call(server.queue, "hang", { timeout: 2_000 });
      await assert.rejects(hung, { code: "timeout" });
      await waitFor(
        "the broker to close the channel, and the server to consume again",
        () => logged.filter((line) => line === " [x] Awaiting RPC requests").length >= 2,
        30_000,
      );
      assert.equal(signal?.aborted, true, "the hung handler's signal aborted");
      assert.equal(decoder.decode(await client.call(queue, "ok", { timeout: 5_000 })), "answered");
    } catch (error) {
      throw new Error(`${(error as Error).message}; the server's log:\n${logged.join("\n")}`);
    } finally {
      await deleteQueue(CLUSTER_URLS, queue);
    }
  },
});
