/**
 * Tests of crash loops: a request that kills whatever connection receives
 * it (headers nested thousands deep, which amqplib's recursive decoder
 * cannot read, written as raw AMQP frames by rpc/_test_poison.ts). With a
 * delivery limit and a dead-letter queue (queue arguments of the test's
 * own quorum queue: the shared broker gets no policy), the service
 * recovers by itself; without one, the server backs off and says so once
 * per period instead of reconnecting 7 times a second.
 *
 * Run: `deno test -A rpc/crash_loop_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { RpcClient, RpcServer } from "./mod.ts";
import { type Backoff, backoffDelay } from "./_backoff.ts";
import { CRASH_LOOP_AFTER, CrashLoopWatch } from "./_crash_loop.ts";
import { publishPoison } from "./_test_poison.ts";
import { BROKER_URL, delay, openBroker, waitFor } from "./_test_util.ts";

const broker = new URL(BROKER_URL);
const poisonTarget = {
  host: broker.hostname === "localhost" ? "127.0.0.1" : broker.hostname,
  port: Number(broker.port || 5672),
};

const upper = (request: Uint8Array) => new TextDecoder().decode(request).toUpperCase();

Deno.test("with a delivery limit and a dead-letter queue, a request that kills every connection ends in the dead-letter queue and the server answers again by itself", async () => {
  await using test = await openBroker();
  const deadLetters = test.newQueue();
  await test.channel.assertQueue(deadLetters, { durable: false });
  await test.channel.assertQueue(test.queue, {
    durable: true,
    arguments: {
      "x-queue-type": "quorum",
      "x-delivery-limit": 2,
      "x-dead-letter-exchange": "",
      "x-dead-letter-routing-key": deadLetters,
    },
  });
  await publishPoison(test.queue, poisonTarget);
  const logged: string[] = [];
  await using _server = await RpcServer.start({
    queue: test.queue,
    handler: upper,
    log: (line) => logged.push(line),
  });
  await waitFor(
    "the poison request to be dead-lettered",
    async () => await test.messageCount(deadLetters) === 1,
    60_000,
  );
  assert.ok(
    logged.some((line) => line.includes("could not be decoded (its headers nest too deep")),
    logged.join("\n"),
  );
  await using client = await RpcClient.connect();
  const reply = await client.call(test.queue, "still here", { timeout: 30_000 });
  assert.equal(new TextDecoder().decode(reply), "STILL HERE");
});

Deno.test("without a delivery limit, a server that a request kills again and again backs off and says why once per period, instead of reconnecting 7 times a second", async () => {
  await using test = await openBroker();
  // A classic queue hands the request back at once: the fastest loop there is.
  await test.channel.assertQueue(test.queue, { durable: false });
  await publishPoison(test.queue, poisonTarget);
  const logged: string[] = [];
  const server = await RpcServer.start({
    queue: test.queue,
    queueType: "classic",
    handler: upper,
    log: (line) => logged.push(line),
  });
  try {
    // A test about time passing: what the server does in 10 s of a crash loop.
    await delay(10_000);
  } finally {
    await server.close();
  }
  const count = (text: string) => logged.filter((line) => line.includes(text)).length;
  const connections = count("Awaiting RPC requests");
  const reports = logged.filter((line) => line.startsWith(" [!] Crash loop:"));
  // Reconnecting at once, 10 s made 69 connections and ~280 lines here (a classic queue).
  assert.ok(connections >= CRASH_LOOP_AFTER + 2, `kept trying: ${connections} connections`);
  assert.ok(connections <= 12, `backed off: ${connections} connections\n${logged.join("\n")}`);
  assert.equal(reports.length, 1, logged.join("\n"));
  assert.equal(count(" [!] Lost "), CRASH_LOOP_AFTER - 1, logged.join("\n"));
  assert.match(reports[0], /could not be decoded \(its headers nest too deep/);
  assert.match(reports[0], /a message that kills whoever receives it/);
  assert.match(reports[0], /delivery limit with a dead-letter queue.*rabbitmqctl set_policy/);
  assert.ok(logged.length <= 25, `${logged.length} lines:\n${logged.join("\n")}`);
});

Deno.test("a crash loop is deaths in a row, each young and the same: a long life or another failure starts the count again", () => {
  const watch = new CrashLoopWatch();
  for (let death = 1; death <= CRASH_LOOP_AFTER; death++) {
    assert.equal(watch.looping, false);
    watch.up();
    watch.down("the same failure");
  }
  assert.equal(watch.looping, true);
  assert.ok(watch.delay() >= 800, `backs off: ${watch.delay()} ms`);
  assert.match(watch.report("amqp://broker", 1_000) ?? "", /died 3 times in a row/);
  assert.equal(watch.report("amqp://broker", 1_000), undefined, "once per period");
  watch.up();
  watch.down("another failure");
  assert.equal(watch.looping, false);
  assert.equal(watch.delay(), 0);
  watch.down("another failure"); // not up: a failed attempt to connect, not a death
  assert.equal(watch.looping, false);
});

Deno.test("the backoff doubles from its first wait to its cap, each wait within its jitter", () => {
  const backoff: Backoff = { first: 100, max: 1_000 };
  const expected = [100, 100, 200, 400, 800, 1_000, 1_000];
  for (const [failures, wait] of [0, 1, 2, 3, 4, 5, 40].entries()) {
    const got = backoffDelay(wait, backoff);
    assert.ok(
      got >= expected[failures] * 0.8 && got <= expected[failures] * 1.2,
      `${wait}: ${got}`,
    );
  }
  assert.equal(backoffDelay(3, { ...backoff, jitter: 0 }), 400);
});
