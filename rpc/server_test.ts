/**
 * Tests of the Fibonacci server (FibonacciRpcServer) against a real broker:
 * its answers and log, bad and hostile requests, queues deleted under it or
 * declared with other settings, closing, and reconnecting when the broker
 * closes its connections. Requests whose callers gave up: deadlines_test.ts;
 * the log's rate: _log_test.ts.
 *
 * Run: `deno test -A rpc/server_test.ts`. The tests that close connections
 * from the broker side need `rabbitmqctl`; the hostile-bytes test needs
 * Debian's python3-pika. Without them they are ignored.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  fib,
  FibonacciRpcClient,
  FibonacciRpcServer,
  MAX_N,
  MAX_REQUEST_BYTES,
  RpcError,
} from "./mod.ts";
import { closeFromBroker, fromBrokerSide } from "./_test_faults.ts";
import { pikaInstalled, PYTHON, runCommand } from "./_test_process.ts";
import {
  BROKER_URL,
  heldHandler,
  openBroker,
  quiet,
  shown,
  slowHandler,
  startPair,
  URL_WITH_PASSWORD,
  waitFor,
} from "./_test_util.ts";

const brokerSide = await fromBrokerSide();

Deno.test("fib(n) is exact for small and large n and refuses anything else", () => {
  assert.deepEqual([0, 1, 2, 3, 10, 30].map(fib), [0n, 1n, 1n, 2n, 55n, 832040n]);
  assert.equal(fib(90), 2880067194370816120n); // past 2^53
  assert.equal(fib(1000) % 1_000_000_007n, 517691607n);
  assert.equal(fib(MAX_N).toString().length, 2090);
  for (const n of [-1, 1.5, NaN, MAX_N + 1]) assert.throws(() => fib(n), RangeError);
});

Deno.test("the server answers each call with fib(n) and logs one line per request", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { client } = pair;
  const numbers = [0, 1, 2, 10, 30, 90, 1000];
  for (const n of numbers) assert.equal(await client.call(n), fib(n), `fib(${n})`);
  assert.deepEqual(logged, [
    " [x] Awaiting RPC requests",
    ...numbers.map((n) => ` [.] fib(${n})`),
  ]);
});

Deno.test("200 calls at once over one client all get the right answers", async () => {
  await using pair = await startPair();
  const { client } = pair;
  const numbers = Array.from({ length: 200 }, (_, i) => (i * 37) % 500);
  const results = await Promise.all(numbers.map((n) => client.call(n)));
  assert.deepEqual(results, numbers.map(fib));
  assert.equal(client.pendingCalls, 0);
  assert.equal(client.droppedReplies, 0);
});

Deno.test("two servers on one queue share the work", async () => {
  await using broker = await openBroker();
  // Each request takes 10 ms of work, and prefetch 1 hands a server one at a
  // time: while one server works, the next request goes to the other.
  const options = {
    url: BROKER_URL,
    queue: broker.queue,
    prefetch: 1,
    handler: slowHandler(10),
    ...quiet,
  };
  await using first = await FibonacciRpcServer.start(options);
  await using second = await FibonacciRpcServer.start(options);
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const numbers = Array.from({ length: 20 }, (_, i) => i);
  assert.deepEqual(await Promise.all(numbers.map((n) => client.call(n))), numbers.map(fib));
  assert.equal(first.answered + second.answered, 20);
  assert.ok(first.answered >= 5 && second.answered >= 5, `${first.answered} / ${second.answered}`);
});

Deno.test("bad requests get an error reply with their correlation id and are acked", async () => {
  await using broker = await openBroker();
  const logged: string[] = [];
  await using server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    log: (line) => logged.push(line),
  });
  const { queue: replyTo, replies } = await broker.replyQueue();
  const expected = `n must be a decimal integer from 0 to ${MAX_N}`;
  const cases: Array<[string, string]> = [
    ["abc", `${expected}, got "abc"`],
    ["-5", `${expected}, got "-5"`],
    ["1.5", `${expected}, got "1.5"`],
    ["1e3", `${expected}, got "1e3"`],
    [String(MAX_N + 1), `${expected}, got "${MAX_N + 1}"`],
    ["99999999999999999999999", `${expected}, got "99999999999999999999999"`],
    ["", `empty request: ${expected}`],
    [
      "7".repeat(MAX_REQUEST_BYTES + 1),
      `request too large: ${MAX_REQUEST_BYTES + 1} bytes, at most 64`,
    ],
    [" 12\n", ""], // white space around a number is fine, as in the tutorials
  ];
  for (const [i, [body]] of cases.entries()) {
    broker.channel.sendToQueue(broker.queue, Buffer.from(body), {
      replyTo,
      correlationId: `c${i}`,
    });
  }
  await waitFor("every reply", () => replies.length === cases.length);
  for (const [i, [body, message]] of cases.entries()) {
    const reply = replies.find((reply) => reply.properties.correlationId === `c${i}`);
    assert.ok(reply, `a reply to ${JSON.stringify(body)}`);
    if (message) {
      assert.equal(reply.properties.type, "error", body);
      assert.equal(reply.content.toString(), message);
    } else {
      assert.equal(reply.properties.type, undefined);
      assert.equal(reply.content.toString(), "144");
    }
  }
  await server.close();
  assert.equal(await broker.messageCount(broker.queue), 0, "nothing requeued");
  assert.equal(logged.filter((line) => line.startsWith(" [!] Bad request: ")).length, 8);
});

Deno.test("a request without reply_to is acked with a log line; one without correlation_id gets an error reply", async () => {
  await using broker = await openBroker();
  const logged: string[] = [];
  await using server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    log: (line) => logged.push(line),
  });
  const { queue: replyTo, replies } = await broker.replyQueue();
  broker.channel.sendToQueue(broker.queue, Buffer.from("5"), { correlationId: "no-reply-to" });
  broker.channel.sendToQueue(broker.queue, Buffer.from("5"), { replyTo });
  await waitFor("the error reply", () => replies.length === 1);
  assert.equal(replies[0].properties.type, "error");
  assert.equal(replies[0].properties.correlationId, undefined);
  assert.equal(replies[0].content.toString(), "request has no correlation_id");
  // Requests are taken in order: the one without reply_to was dealt with before the reply above.
  assert.ok(logged.includes(" [!] Dropped a request without reply_to: nobody to answer"));
  await server.close();
  assert.equal(await broker.messageCount(broker.queue), 0, "both acked");
  assert.equal(server.answered, 1);
});

Deno.test("a handler that fails sends an error reply (internal, with an id; bad-request for a bad n), and the server goes on", async () => {
  const logged: string[] = [];
  await using pair = await startPair({
    handler: (n) => {
      if (n === 13) throw new Error("thirteen is unlucky");
      if (n === 14) return Promise.reject(new Error("fourteen is late"));
      return fib(n);
    },
    log: (line) => logged.push(line),
  });
  const { server, client } = pair;
  for (const [n, detail] of [[13, "thirteen is unlucky"], [14, "fourteen is late"]] as const) {
    await assert.rejects(client.call(n), (error: RpcError) => {
      assert.ok(error instanceof RpcError);
      assert.equal(error.code, "internal");
      const id = error.message.match(/^internal error \(id (\w+)\)$/)?.[1];
      assert.ok(
        logged.some((line) =>
          line.startsWith(` [!] Handler failed (id ${id}): Error: ${detail}\n`)
        ),
      );
      return true;
    });
  }
  await assert.rejects(client.call(MAX_N + 1), {
    code: "bad-request",
    message: `n must be a decimal integer from 0 to ${MAX_N}, got "${MAX_N + 1}"`,
  });
  assert.equal(await client.call(15), 610n);
  assert.equal(server.answered, 4);
});

Deno.test("a queue that exists with other settings is used as it is, and the server says how to change it", async () => {
  await using broker = await openBroker();
  const quorum = { durable: true, arguments: { "x-queue-type": "quorum" } };
  const classic = { durable: true }; // as older copies of the tutorials declare it
  for (const [queueType, existing] of [["quorum", classic], ["classic", quorum]] as const) {
    const queue = broker.newQueue();
    await broker.channel.assertQueue(queue, existing);
    const logged: string[] = [];
    await using _server = await FibonacciRpcServer.start({
      url: BROKER_URL,
      queue,
      queueType,
      log: (line) => logged.push(line),
    });
    await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue });
    assert.equal(await client.call(9), 34n);
    assert.deepEqual(logged.slice(0, 2), [
      ` [!] Queue "${queue}" exists with other settings; using it as it is ` +
      `(to declare it ${queueType}: rabbitmqctl delete_queue ${queue})`,
      " [x] Awaiting RPC requests",
    ]);
    // Declaring it as it was still works: the server left the queue alone.
    await broker.withChannel((channel) => channel.assertQueue(queue, existing));
  }
});

Deno.test({
  name: "requests with raw non-UTF-8 bytes in reply_to or correlation_id never stall the server",
  ignore: !(await pikaInstalled()),
  async fn() {
    await using broker = await openBroker();
    const logged: string[] = [];
    await using server = await FibonacciRpcServer.start({
      url: BROKER_URL,
      queue: broker.queue,
      prefetch: 10,
      log: (line) => logged.push(line),
    });
    const { queue: replyTo, replies } = await broker.replyQueue();
    // More than prefetch of each kind: raw correlation ids (short and long),
    // raw reply_to, both. One publisher per kind, all at once.
    const published = await Promise.all(
      ["correlation_id", "reply_to", "both"].map((field) =>
        runCommand(
          PYTHON,
          [
            "interop/hostile_publish.py",
            ...["--queue", broker.queue, "--count", "24", "--field", field],
            ...["--reply-to", replyTo],
          ],
          20_000,
          { AMQP_URL: BROKER_URL },
        )
      ),
    );
    for (const output of published) assert.equal(output.code, 0, output.stderr);
    // A normal request after them, on the same reply queue: once its answer is
    // back, every hostile request before it has been taken and settled.
    broker.channel.sendToQueue(broker.queue, Buffer.from("10"), {
      replyTo,
      correlationId: "after-the-hostile-ones",
    });
    await waitFor("the normal reply", () => replies.length > 0, 5_000);
    assert.deepEqual(
      replies.map((reply) => [reply.properties.correlationId, reply.content.toString()]),
      [["after-the-hostile-ones", "55"]],
      "no reply with an altered correlation id",
    );
    await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
    assert.equal(await client.call(11, { timeout: 5_000 }), 89n);
    await server.close(); // writes the summary of log lines held back
    const summarised = logged.map((line) =>
      Number(line.match(/Not shown: .*?(\d+) refused/)?.[1] ?? 0)
    );
    assert.equal(
      logged.filter((line) => line.includes("not UTF-8")).length +
        summarised.reduce((sum, count) => sum + count, 0),
      72,
      "each dropped request logged, or counted at load",
    );
    assert.equal(await broker.messageCount(broker.queue), 0, "all acked, none left to redeliver");
  },
});

Deno.test("a server whose queue is deleted under it declares it again and goes on", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { broker, client } = pair;
  assert.equal(await client.call(5), 5n);
  await broker.channel.deleteQueue(broker.queue);
  await waitFor(
    "the server to consume again",
    () => logged.filter((line) => line === " [x] Awaiting RPC requests").length === 2,
  );
  assert.ok(
    logged.includes(` [!] The broker cancelled the consumer of "${broker.queue}"; reconnecting`),
  );
  assert.equal(await client.call(6), 8n);
});

Deno.test("closing the server finishes and acks the requests in progress, then stops consuming", async () => {
  const held = heldHandler();
  // Classic: a quorum queue counts a cancelled consumer until its requests are acked.
  await using pair = await startPair({ handler: held.handler, queueType: "classic" });
  using _held = held; // released first, whatever happens, so that the server can close
  const { broker, server, client } = pair;
  const call = client.call(25);
  call.catch(() => {}); // awaited below; a failure before then must not go unhandled
  await waitFor("the request to be in progress", () => held.seen.length === 1);
  let closed = false;
  const closing = server.close().then(() => closed = true);
  await waitFor("the server to stop consuming", async () => await client.consumerCount() === 0);
  assert.equal(closed, false, "close() waits for the request in progress");
  held.release();
  await closing;
  assert.equal(await call, 75025n);
  assert.equal(await broker.messageCount(broker.queue), 0, "acked, not requeued");
  await assert.rejects(client.call(1, { timeout: 200 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    assert.equal(error.diagnosis?.cause, "no-server");
    return true;
  });
});

Deno.test({
  name: "the server reconnects by itself after the broker closes its request connection",
  ...brokerSide,
  async fn() {
    const logged: string[] = [];
    const url = URL_WITH_PASSWORD;
    await using pair = await startPair({ url, log: (line) => logged.push(line) });
    const { server, client } = pair;
    assert.equal(await client.call(3), 2n);
    await closeFromBroker(server.connectionName);
    await waitFor(
      "the server to consume again",
      () => logged.filter((line) => line === " [x] Awaiting RPC requests").length === 2,
    );
    assert.equal(await client.call(4), 3n);
    const lost = logged.findIndex((line) => line.startsWith(" [!] Lost "));
    assert.equal(
      logged[lost],
      ` [!] Lost ${shown(url)}: Connection closed: 320 (CONNECTION-FORCED) with message ` +
        `"CONNECTION_FORCED - closed by rpc_test"`,
    );
    assert.match(logged[lost + 1], / \[!\] Reconnecting to \S+ in \d+ ms$/);
    assert.equal(logged[lost + 2], ` [x] Connected to ${shown(url)}`);
    assert.equal(logged[lost + 3], " [x] Awaiting RPC requests");
    const password = new URL(url).password;
    assert.ok(!logged.some((line) => line.includes(`:${password}@`)), "no password in the log");
  },
});

Deno.test({
  name: "the server reopens its reply connection after the broker closes it, and answers on",
  ...brokerSide,
  async fn() {
    const logged: string[] = [];
    await using pair = await startPair({ log: (line) => logged.push(line) });
    const { server, client } = pair;
    assert.equal(await client.call(3), 2n);
    await closeFromBroker(`${server.connectionName} replies`);
    await waitFor(
      "the reply connection to be back",
      () => logged.includes(` [x] Connected to ${shown(BROKER_URL)} (reply connection)`),
    );
    assert.equal(await client.call(4), 3n);
    assert.ok(
      logged.includes(
        ` [!] Lost ${shown(BROKER_URL)}: Connection closed: 320 (CONNECTION-FORCED) with ` +
          `message "CONNECTION_FORCED - closed by rpc_test" (reply connection)`,
      ),
      logged.join("\n"),
    );
    assert.equal(
      logged.filter((line) => line === " [x] Awaiting RPC requests").length,
      1,
      "the request connection stayed up",
    );
  },
});

Deno.test({
  name:
    "after the broker closes the request connection under a hung handler, the slots start clean and the server answers again",
  ...brokerSide,
  async fn() {
    const logged: string[] = [];
    let started = 0;
    await using pair = await startPair({
      url: URL_WITH_PASSWORD,
      concurrency: 1,
      // The first delivery hangs; a redelivery (the request may come back) answers.
      handler: (n) => n === 1 && started++ === 0 ? new Promise<bigint>(() => {}) : fib(n),
      log: (line) => logged.push(line),
    });
    const { server, client } = pair;
    client.call(1, { timeout: 1_000 }).catch(() => {}); // holds the only slot for good
    await waitFor("the hung handler", () => started >= 1);
    await closeFromBroker(server.connectionName);
    await waitFor(
      "the server to consume again",
      () => logged.filter((line) => line === " [x] Awaiting RPC requests").length === 2,
    );
    assert.equal(await client.call(7, { timeout: 3_000 }), 13n);
  },
});
