/**
 * Tests of deadlines on the server's side (rpc/deadlines.ts): how the
 * headers are read (the time left on the server's clock; an older client's
 * instant; hostile values ignored), and, against a real broker, that a
 * request whose caller's deadline has passed is acked without being
 * computed, and an overloaded server catches up at once by skipping the
 * requests nobody waits for; and a server whose clock runs 5 s ahead
 * (libfaketime) still answers.
 *
 * Run: `deno test -A rpc/deadlines_test.ts`. The clock test needs Debian's
 * faketime (`apt-get install -y faketime`); without it, it is ignored.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { fib, FibonacciRpcClient, FibonacciRpcServer } from "./mod.ts";
import { deadlineHeaders, MAX_TIMEOUT_MS, readDeadline } from "./deadlines.ts";
import { FIB_SERVER, spawnDeno } from "./_test_process.ts";
import { BROKER_URL, openBroker, quiet, slowHandler, waitFor } from "./_test_util.ts";

Deno.test("a request's deadline is the time left on the server's clock, else an older client's instant; hostile values count as none", () => {
  const now = 1_000_000;
  assert.deepEqual(deadlineHeaders(now + 1_500, now), {
    "x-deadline": now + 1_500,
    "x-timeout-ms": 1_500,
  });
  assert.equal(deadlineHeaders(now - 10, now)["x-timeout-ms"], 1, "never 0 or less");
  // Both headers: the time left wins, whatever the caller's clock said.
  assert.deepEqual(readDeadline({ "x-timeout-ms": 400, "x-deadline": 5 }, now), {
    deadline: now + 400,
    gaveUpAfter: now + 400,
  });
  // An older client: its instant, with grace for the clocks.
  assert.deepEqual(readDeadline({ "x-deadline": now + 50 }, now), {
    deadline: now + 50,
    gaveUpAfter: now + 300,
  });
  const hostile = [-1, NaN, Infinity, MAX_TIMEOUT_MS + 1, "400", null, { value: 400 }, [400], true];
  for (const value of hostile) {
    assert.equal(readDeadline({ "x-timeout-ms": value }, now), undefined, String(value));
    if (value !== MAX_TIMEOUT_MS + 1) { // a fine instant, in January 1970
      assert.equal(readDeadline({ "x-deadline": value === -1 ? 0 : value }, now), undefined);
    }
    // A bad time left falls back to a good instant.
    assert.equal(
      readDeadline({ "x-timeout-ms": value, "x-deadline": now + 9 }, now)?.deadline,
      now + 9,
    );
  }
  assert.equal(readDeadline(undefined, now), undefined);
  assert.equal(readDeadline(Object.create({ "x-timeout-ms": 5 }), now), undefined, "own keys only");
});

Deno.test("a request whose x-deadline has passed is acked without being computed, unless skipLate is false", async () => {
  await using broker = await openBroker();
  const { queue: replyTo, replies } = await broker.replyQueue();
  const send = (n: number, correlationId: string, deadline?: number) =>
    broker.channel.sendToQueue(broker.queue, Buffer.from(String(n)), {
      replyTo,
      correlationId,
      headers: deadline === undefined ? {} : { "x-deadline": deadline },
    });
  for (const skipLate of [true, false]) {
    const seen: number[] = [];
    const logged: string[] = [];
    await using server = await FibonacciRpcServer.start({
      url: BROKER_URL,
      queue: broker.queue,
      skipLate,
      handler: (n) => (seen.push(n), fib(n)),
      log: (line) => logged.push(line),
    });
    replies.length = 0;
    send(20, "late", Date.now() - 1_000); // past its deadline and the 250 ms of grace
    send(21, "in time", Date.now() + 10_000);
    send(22, "no deadline"); // as the other tutorials' clients send it
    await waitFor(
      "the last reply",
      () => replies.length > 0 && replies.at(-1)?.properties.correlationId === "no deadline",
    );
    const answered = replies.map((reply) => reply.properties.correlationId);
    if (skipLate) {
      assert.deepEqual(answered, ["in time", "no deadline"]);
      assert.deepEqual(seen, [21, 22]);
      assert.equal(server.skipped, 1);
      assert.ok(logged.includes(" [.] Skipped a request whose caller gave up (deadline passed)"));
    } else {
      assert.deepEqual(answered, ["late", "in time", "no deadline"]);
      assert.deepEqual(seen, [20, 21, 22]);
      assert.equal(server.skipped, 0);
    }
    await server.close();
    assert.equal(await broker.messageCount(broker.queue), 0, "every request acked");
  }
});

Deno.test("an overloaded server skips requests whose callers gave up, and catches up at once", async () => {
  await using broker = await openBroker();
  const seen: number[] = [];
  await using server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: slowHandler(100, seen),
    concurrency: 1, // one at a time, so that most requests wait
    ...quiet,
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const burst = await Promise.allSettled(
    Array.from({ length: 100 }, (_, i) => client.call(i, { timeout: 500 })),
  );
  const failures = burst.flatMap((outcome) =>
    outcome.status === "rejected" ? [outcome.reason] : []
  );
  assert.ok(failures.length >= 85, `${failures.length} of 100 timed out`);
  for (const error of failures) {
    assert.equal(error.code, "timeout");
    assert.equal(error.diagnosis.cause, "no-answer", error.message);
    assert.equal(error.diagnosis.consumers, 1);
    assert.match(error.message, /1 server consumes "rpc_test\..*" but none answered in time/);
  }
  const started = performance.now();
  assert.equal(await client.call(20, { timeout: 5_000 }), 6765n);
  const recovery = performance.now() - started;
  console.log(`    a fresh call after the burst took ${recovery.toFixed(0)} ms`);
  assert.ok(recovery < 1_500, `answered at once, not after the backlog: ${recovery} ms`);
  // The handler ran only for the few it could finish in time; of the rest,
  // those in the server's backlog (prefetch 50) were skipped, and those still
  // in the queue expired there.
  assert.ok(seen.length <= 15, `the handler ran ${seen.length} times for 100 requests`);
  assert.ok(server.skipped >= 30, `${server.skipped} skipped`);
});

const faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const hasFaketime = await Deno.stat(faketime).then(() => true, () => false);

Deno.test({
  name:
    "a server whose clock runs 5 s ahead (libfaketime) answers 1 s calls, and still skips those whose time ran out",
  ignore: !hasFaketime,
  async fn() {
    await using broker = await openBroker();
    await using server = spawnDeno(["run", "-A", FIB_SERVER, "--queue", broker.queue], {
      env: { LD_PRELOAD: faketime, FAKETIME: "+5s", AMQP_URL: BROKER_URL },
      disposeSignal: "SIGTERM",
    });
    await waitFor("the server", () => server.stdout.includes(" [x] Awaiting RPC requests"));
    await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
    for (const n of [10, 20, 30]) assert.equal(await client.call(n, { timeout: 1_000 }), fib(n));
    // An older client's request, with only x-deadline 1 s ahead on our clock: 4 s behind the
    // server's, so it is skipped, as before (the clock's lie is what x-timeout-ms fixes).
    const { queue: replyTo, replies } = await broker.replyQueue();
    broker.channel.sendToQueue(broker.queue, Buffer.from("5"), {
      replyTo,
      correlationId: "old client",
      headers: { "x-deadline": Date.now() + 1_000 },
    });
    broker.channel.sendToQueue(broker.queue, Buffer.from("6"), {
      replyTo,
      correlationId: "new client, no time left",
      headers: { "x-timeout-ms": 0 },
    });
    broker.channel.sendToQueue(broker.queue, Buffer.from("7"), { replyTo, correlationId: "none" });
    await waitFor("the last reply", () => replies.length === 1);
    assert.deepEqual(replies.map((reply) => reply.properties.correlationId), ["none"]);
    const skipped = server.stdout.split("\n").filter((line) => line.includes("Skipped"));
    assert.equal(skipped.length, 2, server.stdout);
  },
});

Deno.test("a request given back after its caller's time ran out is not computed again: the broker keeps its expiration", async () => {
  await using broker = await openBroker();
  let started = 0;
  const hung = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: () => (started++, new Promise<bigint>(() => {})), // never settles
    closeTimeout: 100,
    ...quiet,
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  await assert.rejects(client.call(10, { timeout: 500 }), { code: "timeout" });
  await hung.close(); // gives the request back, after its time ran out
  assert.equal(started, 1);
  const seen: number[] = [];
  await using _next = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: (n) => (seen.push(n), fib(n)),
    skipLate: false, // so that only the broker can keep it from this server
    ...quiet,
  });
  assert.equal(await client.call(11, { timeout: 5_000 }), 89n);
  assert.deepEqual(seen, [11], "the expired request was never delivered again");
  assert.equal(await broker.messageCount(broker.queue), 0);
});
