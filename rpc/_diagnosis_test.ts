/**
 * Tests of what a timed-out call says about why (rpc/_diagnosis.ts), against
 * a real broker: no server consumes the queue, the server did not answer in
 * time, the queue was deleted; one look at the queue for a whole burst.
 *
 * Run: `deno test -A rpc/_diagnosis_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FibonacciRpcClient, RpcError } from "./mod.ts";
import {
  BROKER_URL,
  heldHandler,
  openBroker,
  QUORUM_QUEUE,
  startPair,
  waitFor,
} from "./_test_util.ts";

Deno.test("a call that times out while no server consumes the queue says so", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  assert.equal(await client.consumerCount(), 0);
  await assert.rejects(client.call(7, { timeout: 300 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    // The request expires at its deadline, so the look at the queue may or may not still see it.
    assert.match(
      error.message,
      new RegExp(
        `^fib\\(7\\): no reply within 300 ms: no server consumes "${broker.queue}" ` +
          `\\((0 requests|1 request) waiting in it; start one\\)$`,
      ),
    );
    assert.equal(error.diagnosis?.cause, "no-server");
    assert.equal(error.diagnosis?.consumers, 0);
    return true;
  });
});

Deno.test("with no server at all, a timeout says that nobody consumes the queue, once for a whole burst", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM_QUEUE);
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const burst = await Promise.allSettled(
    Array.from({ length: 2000 }, (_, i) => client.call(i, { timeout: 300 })),
  );
  const errors = burst.map((outcome) => (outcome as PromiseRejectedResult).reason as RpcError);
  assert.ok(errors.every((error) => error?.code === "timeout"));
  assert.equal(errors[0].diagnosis?.cause, "no-server");
  assert.match(
    errors[0].message,
    /no server consumes "rpc_test\..*" \(\d+ requests? waiting in it/,
  );
  assert.equal(new Set(errors.map((error) => error.diagnosis)).size, 1, "one look at the queue");
});

Deno.test("a timed-out call says the server did not answer in time, is forgotten, and its late reply is dropped", async () => {
  const held = heldHandler();
  await using pair = await startPair({ handler: held.handler });
  using _held = held; // released first, whatever happens, so that the server can close
  const { broker, client } = pair;
  await assert.rejects(client.call(10, { timeout: 500 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    assert.deepEqual(error.diagnosis, { cause: "no-answer", consumers: 1, queued: 0 });
    assert.equal(
      error.message,
      `fib(10): no reply within 500 ms: 1 server consumes "${broker.queue}" and no request ` +
        "waits in it: a server took the request and did not answer in time (a slow handler, " +
        "or a lost reply), or the request expired in the queue before a server took it " +
        "(a queue TTL, x-message-ttl?)",
    );
    return true;
  });
  assert.equal(client.pendingCalls, 0);
  assert.deepEqual(held.seen, [10], "the server was working on it");
  held.release();
  await waitFor("the late reply", () => client.droppedReplies === 1);
  assert.equal(await client.call(12), 144n);
});

Deno.test("a call whose queue is deleted while it waits times out saying the queue is gone", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const call = assert.rejects(client.call(7, { timeout: 1_000 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    assert.deepEqual(error.diagnosis, { cause: "no-queue" });
    assert.equal(
      error.message,
      `fib(7): no reply within 1000 ms: the queue "${broker.queue}" no longer exists`,
    );
    return true;
  });
  await waitFor(
    "the request to be queued",
    async () => await broker.messageCount(broker.queue) === 1,
  );
  await broker.channel.deleteQueue(broker.queue);
  await call;
});
