/**
 * Tests of the Fibonacci client (FibonacciRpcClient) against a real broker:
 * its callback queues, the replies it drops, what it puts on each request,
 * the code of an error reply, aborts, calls to no queue, the cap on replies, retrying after a lost
 * connection, and how few socket writes a burst of calls takes. What a
 * timeout says about why: _diagnosis_test.ts.
 *
 * Run: `deno test -A rpc/client_test.ts`. The test that closes the client's
 * connection from the broker side needs `rabbitmqctl`; without it, it is
 * ignored.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import amqp from "npm:amqplib@2.3.1";
import type { ChannelModel, Message } from "npm:amqplib@2.3.1";
import { fib, FibonacciRpcClient, FibonacciRpcServer, RpcError } from "./mod.ts";
import { closeFromBroker, fromBrokerSide, startCountingProxy, startProxy } from "./_test_faults.ts";
import {
  BROKER_URL,
  heldHandler,
  openBroker,
  quiet,
  QUORUM_QUEUE,
  shown,
  startPair,
  waitFor,
} from "./_test_util.ts";

const brokerSide = await fromBrokerSide();

Deno.test("by default the callback queue is the tutorial's: exclusive, named by the broker", async () => {
  await using pair = await startPair();
  const { broker, client } = pair;
  assert.match(client.callbackQueue, /^amq\.gen-/);
  /** A passive declare from the test's connection: the broker's answer code. */
  const lookUp = () =>
    broker.withChannel((channel) => channel.checkQueue(client.callbackQueue)).then(
      () => 200,
      (error) => (error as { code?: number }).code,
    );
  // 405 RESOURCE_LOCKED: the queue exists, exclusive to another connection (the client's).
  assert.equal(await lookUp(), 405);
  assert.deepEqual(await Promise.all([5, 6, 7].map((n) => client.call(n))), [5n, 8n, 13n]);
  await client.close();
  await waitFor(
    "the broker to delete it with the client's connection",
    async () => await lookUp() === 404,
  );
});

Deno.test('with replyQueue "direct" the client uses direct reply-to and gets its answers', async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM_QUEUE);
  await using client = await FibonacciRpcClient.connect({
    url: BROKER_URL,
    queue: broker.queue,
    replyQueue: "direct",
  });
  assert.equal(client.callbackQueue, "amq.rabbitmq.reply-to");
  // The test answers the first request itself, to see the reply_to it carries.
  let replyTo = "";
  const { consumerTag } = await broker.channel.consume(broker.queue, (request) => {
    if (!request) return;
    replyTo = request.properties.replyTo;
    const answer = Buffer.from(String(fib(Number(request.content.toString()))));
    broker.channel.sendToQueue(replyTo, answer, {
      correlationId: request.properties.correlationId,
    });
    broker.channel.ack(request);
  });
  assert.equal(await client.call(10), 55n);
  // The broker rewrites amq.rabbitmq.reply-to into an address of the caller's channel.
  assert.match(replyTo, /^amq\.rabbitmq\.reply-to\.\S+$/);
  await broker.channel.cancel(consumerTag);
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    ...quiet,
  });
  assert.deepEqual(await Promise.all([5, 6, 7].map((n) => client.call(n))), [5n, 8n, 13n]);
  assert.equal(client.droppedReplies, 0);
});

Deno.test("a duplicate reply and a reply with an unknown correlation_id are dropped", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  // A peer that answers every request twice and adds a stray reply.
  await broker.channel.consume(broker.queue, (request) => {
    if (!request) return;
    const { replyTo, correlationId } = request.properties;
    const answer = Buffer.from(String(fib(Number(request.content.toString()))));
    broker.channel.sendToQueue(replyTo, answer, { correlationId });
    broker.channel.sendToQueue(replyTo, Buffer.from("999"), { correlationId });
    broker.channel.sendToQueue(replyTo, Buffer.from("777"), { correlationId: "nobody-asked" });
    broker.channel.ack(request);
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  assert.equal(await client.call(10), 55n);
  await waitFor("both extra replies", () => client.droppedReplies === 2);
  assert.equal(await client.call(11), 89n);
  await waitFor("the next extra replies", () => client.droppedReplies === 4);
  assert.equal(client.pendingCalls, 0);
});

Deno.test("a server that dies between its reply and its ack: the request is answered again and the client drops the duplicate", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM_QUEUE);
  // The first server replies, then dies before it acks.
  const doomed: ChannelModel = await amqp.connect(BROKER_URL);
  await using _doomed = { [Symbol.asyncDispose]: () => doomed.close().catch(() => {}) };
  const doomedChannel = await doomed.createChannel();
  let replied = false;
  await doomedChannel.consume(broker.queue, (request) => {
    if (!request || replied) return;
    const { replyTo, correlationId } = request.properties;
    doomedChannel.sendToQueue(replyTo, Buffer.from("21"), { correlationId });
    replied = true;
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  assert.equal(await client.call(8), 21n);
  await doomed.close(); // the unacked request goes back to the queue
  const seen: number[] = [];
  await using _second = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: (n) => (seen.push(n), fib(n)),
    ...quiet,
  });
  await waitFor("the duplicate reply", () => client.droppedReplies === 1);
  assert.deepEqual(seen, [8], "the second server answered the redelivered request");
  assert.equal(client.pendingCalls, 0);
  assert.equal(await client.call(9), 34n);
});

Deno.test("each request carries reply_to, a fresh correlation_id, user_id, its headers, and its deadline as expiration, x-timeout-ms and x-deadline", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  const requests: Message[] = [];
  await broker.channel.consume(broker.queue, (request) => {
    if (!request) return;
    requests.push(request);
    const answer = Buffer.from(String(fib(Number(request.content.toString()))));
    const { replyTo, correlationId } = request.properties;
    broker.channel.sendToQueue(replyTo, answer, { correlationId });
    broker.channel.ack(request);
  });
  await using client = await FibonacciRpcClient.connect({
    url: BROKER_URL,
    queue: broker.queue,
    timeout: 5_000,
  });
  const before = Date.now();
  assert.equal(await client.call(7), 13n);
  assert.equal(await client.call(8, { timeout: 2_000, headers: { tenant: "acme" } }), 21n);
  const after = Date.now();
  assert.equal(requests[1].properties.headers?.tenant, "acme");
  assert.equal(requests[0].properties.headers?.tenant, undefined);
  assert.equal(requests.length, 2);
  for (const [request, n, timeout] of [[requests[0], 7, 5_000], [requests[1], 8, 2_000]] as const) {
    const { replyTo, correlationId, expiration, headers } = request.properties;
    assert.equal(request.content.toString(), String(n));
    assert.equal(replyTo, client.callbackQueue);
    assert.match(correlationId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    const deadline = headers?.["x-deadline"];
    assert.ok(
      before + timeout <= deadline && deadline <= after + timeout,
      `x-deadline ${deadline}`,
    );
    assert.ok(0 < Number(expiration) && Number(expiration) <= timeout, `expiration ${expiration}`);
    const left = headers?.["x-timeout-ms"];
    assert.ok(timeout - 1_000 < left && left <= timeout, `x-timeout-ms ${left}`);
    assert.equal(request.properties.userId, new URL(BROKER_URL).username || "guest");
  }
  assert.notEqual(requests[0].properties.correlationId, requests[1].properties.correlationId);
});

Deno.test("a call to a queue that does not exist fails at once with no-route", async () => {
  await using broker = await openBroker(); // names the queue, never declares it
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const started = performance.now();
  await assert.rejects(client.call(5, { timeout: 10_000 }), (error: RpcError) => {
    assert.equal(error.code, "no-route");
    assert.equal(error.message, `fib(5): no queue named "${broker.queue}": is the server running?`);
    return true;
  });
  assert.ok(performance.now() - started < 2_000, "rejected by basic.return, not by the timeout");
  assert.equal(client.pendingCalls, 0);
  assert.equal(await client.consumerCount(), undefined);
});

Deno.test("a request nobody waits for any more expires in the queue and is never computed", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM_QUEUE);
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  await assert.rejects(client.call(20, { timeout: 100 }), { code: "timeout" });
  await waitFor("the request to expire", async () => await broker.messageCount(broker.queue) === 0);
  const seen: number[] = [];
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: (n) => (seen.push(n), fib(n)),
    skipLate: false, // so that only the expiration keeps fib(20) from being computed
    ...quiet,
  });
  assert.equal(await client.call(21), 10946n);
  assert.deepEqual(seen, [21], "fib(20) was never computed");
});

Deno.test("an aborted call rejects with the signal's reason and its late reply is dropped", async () => {
  const held = heldHandler();
  await using pair = await startPair({ handler: held.handler });
  using _held = held; // released first, whatever happens, so that the server can close
  const { client } = pair;
  const controller = new AbortController();
  const call = client.call(10, { signal: controller.signal });
  await waitFor("the request to be in progress", () => held.seen.includes(10));
  controller.abort(new Error("user gave up"));
  await assert.rejects(call, /user gave up/);
  assert.equal(client.pendingCalls, 0);
  await assert.rejects(client.call(1, { signal: AbortSignal.abort() }), { name: "AbortError" });
  held.release();
  await waitFor("the reply to the aborted call", () => client.droppedReplies === 1);
  assert.equal(await client.call(12, { signal: new AbortController().signal }), 144n);
  assert.deepEqual(held.seen, [10, 12], "an already aborted call is never sent");
});

Deno.test("an error reply's x-error-code becomes the RpcError's code; without one, or with one that is no short word, the code is remote", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  const codes: Record<string, unknown> = {
    "1": "out-of-stock",
    "2": undefined, // an older server, or another tutorial server
    "3": "x".repeat(65),
    "4": "two words",
    "5": 42,
  };
  await broker.channel.consume(broker.queue, (request) => {
    if (!request) return;
    const code = codes[request.content.toString()];
    broker.channel.sendToQueue(request.properties.replyTo, Buffer.from("it failed"), {
      correlationId: request.properties.correlationId,
      type: "error",
      headers: code === undefined ? {} : { "x-error-code": code },
    });
    broker.channel.ack(request);
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const expected = ["out-of-stock", "remote", "remote", "remote", "remote"];
  for (const [i, code] of expected.entries()) {
    await assert.rejects(client.call(i + 1), { name: "RpcError", code, message: "it failed" });
  }
});

Deno.test("a reply larger than the client accepts fails with bad-reply, unread", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  // A peer that answers fib(1) with 10 MiB of digits and fib(2) with a 100 KiB
  // error, and fib(3) with seven digits.
  const answers: Record<string, [string, string | undefined]> = {
    "1": ["7".repeat(10 * 1024 * 1024), undefined],
    "2": ["x".repeat(100 * 1024), "error"],
    "3": ["1234567", undefined],
  };
  await broker.channel.consume(broker.queue, (request) => {
    if (!request) return;
    const [body, type] = answers[request.content.toString()];
    broker.channel.sendToQueue(request.properties.replyTo, Buffer.from(body), {
      correlationId: request.properties.correlationId,
      type,
    });
    broker.channel.ack(request);
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const started = performance.now();
  await assert.rejects(client.call(1), {
    code: "bad-reply",
    message: "fib(1): the reply has 10485760 bytes, more than the 65536 accepted",
  });
  await assert.rejects(client.call(2), {
    code: "bad-reply",
    message: "fib(2): the reply has 102400 bytes, more than the 65536 accepted",
  });
  assert.ok(performance.now() - started < 3_000, "not parsed");
  assert.equal(await client.call(3), 1234567n);
  await using strict = await FibonacciRpcClient.connect({
    url: BROKER_URL,
    queue: broker.queue,
    maxReplyBytes: 6,
  });
  await assert.rejects(strict.call(3), { code: "bad-reply" });
  await assert.rejects(
    FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue, maxReplyBytes: 0 }),
    { name: "RangeError", message: "maxReplyBytes must be a positive whole number, got 0" },
  );
});

Deno.test({
  name: "when the broker closes the client's connection, calls in flight fail at once, " +
    "calls with retry are sent again, and the client reconnects",
  ...brokerSide,
  async fn() {
    const held = heldHandler();
    const logged: string[] = [];
    await using pair = await startPair({ handler: held.handler }, {
      log: (line) => logged.push(line),
    });
    using _held = held; // released first, whatever happens, so that the server can close
    const { client } = pair;
    // The handler holds fib(8) (fib(9) waits behind it) while rabbitmqctl
    // closes the connection, which takes seconds here.
    const failed = assert.rejects(client.call(8, { timeout: 25_000 }), (error: RpcError) => {
      assert.equal(error.code, "connection-lost");
      assert.equal(error.message, "fib(8): lost the connection to the broker");
      return true;
    });
    const retried = client.call(9, { timeout: 25_000, retry: true });
    await waitFor("fib(8) to be in progress", () => held.seen.includes(8));
    await closeFromBroker(client.connectionName);
    await failed;
    assert.equal(client.pendingCalls, 1, "the call with retry still waits");
    held.release();
    assert.equal(await retried, 34n);
    assert.equal(await client.call(6), 8n);
    assert.ok(logged.includes(` [x] Connected to ${shown(BROKER_URL)}`), logged.join("\n"));
  },
});

Deno.test("a call with retry waits for the broker, but never past its deadline", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    ...quiet,
  });
  await using client = await FibonacciRpcClient.connect({ url: proxy.url, queue: broker.queue });
  assert.equal(await client.call(4), 3n);
  proxy.cut(); // and never restored: the client cannot reconnect
  await waitFor("the client to notice", async () => {
    const error = await client.call(1).catch((error) => error);
    return error instanceof RpcError && error.code === "connection-lost";
  });
  const started = performance.now();
  await assert.rejects(client.call(5, { retry: true, timeout: 500 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    assert.equal(error.diagnosis?.cause, "disconnected");
    assert.match(error.message, /the connection to the broker was lost meanwhile/);
    return true;
  });
  const waited = performance.now() - started;
  assert.ok(waited >= 450 && waited < 1_500, `rejected at its deadline: ${waited} ms`);
  assert.equal(client.pendingCalls, 0);
});

Deno.test("a burst of 200 calls leaves the client in a few socket writes, not one per call", async () => {
  await using broker = await openBroker();
  await using proxy = await startCountingProxy();
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    ...quiet,
  });
  await using client = await FibonacciRpcClient.connect({ url: proxy.url, queue: broker.queue });
  assert.equal(await client.call(5), 5n); // the channel and the callback queue are set up
  await proxy.sync(); // every read so far is counted
  const before = proxy.reads.length;
  const results = await Promise.all(Array.from({ length: 200 }, () => client.call(10)));
  assert.ok(results.every((result) => result === 55n));
  await proxy.sync(); // the same, for the burst
  const burst = proxy.reads.slice(before);
  const bytes = burst.reduce((sum, size) => sum + size, 0);
  assert.ok(bytes > 200 * 100, `the 200 requests went through the proxy: ${bytes} bytes`);
  assert.ok(burst.length <= 3, `${burst.length} writes for 200 requests: ${burst.join(" ")}`);
});
