/**
 * Tests of what a server trusts and tells, against a real broker: it
 * answers only broker-named `reply_to` queues (or those `allowReplyTo`
 * lets through), and its error replies carry a code, and for an internal
 * error an id, never the error's detail.
 *
 * Run: `deno test -A rpc/trust_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  BadRequestError,
  ERROR_CODE_HEADER,
  RpcClient,
  RpcError,
  RpcServer,
  type ServerOptions,
} from "./mod.ts";
import { BROKER_URL, openBroker, waitFor } from "./_test_util.ts";

/** Publishes `body` to `queue` as a caller would, with this `reply_to`. */
function request(
  broker: Awaited<ReturnType<typeof openBroker>>,
  queue: string,
  replyTo: string,
  correlationId: string,
  body = "x",
) {
  broker.channel.sendToQueue(queue, Buffer.from(body), { replyTo, correlationId });
}

/** A server that answers "done" (or throws, for "fail"), its log kept in `logged`. */
async function startServer(queue: string, options: Partial<ServerOptions> = {}) {
  const logged: string[] = [];
  const server = await RpcServer.start({
    url: BROKER_URL,
    queue,
    handler: (body) => {
      const text = new TextDecoder().decode(body);
      if (text === "fail") throw new Error("insert failed: postgres://app:dbpass@10.0.0.5/prod");
      if (text === "bad") throw new BadRequestError("bad input");
      return "done";
    },
    log: (line) => logged.push(line),
    ...options,
  });
  return Object.assign(server, { logged });
}

Deno.test("a request whose reply_to names another queue gets no reply there: it is acked and logged", async () => {
  await using broker = await openBroker();
  // Another service's work queue, which any caller can name.
  const victim = broker.newQueue();
  await broker.channel.assertQueue(victim, { durable: false });
  const server = await startServer(broker.queue);
  const { queue: replyTo, replies } = await broker.replyQueue();
  request(broker, broker.queue, victim, "injected");
  request(broker, broker.queue, replyTo, "honest"); // after them: once answered, they were dealt with
  await waitFor("the honest reply", () => replies.length === 1);
  assert.equal(replies[0].properties.correlationId, "honest");
  await server.close();
  assert.equal(await broker.messageCount(victim), 0, "nothing written into the other queue");
  assert.equal(await broker.messageCount(broker.queue), 0, "both acked");
  assert.equal(server.answered, 1);
  assert.ok(server.logged.includes(
    ` [!] Dropped a request whose reply_to "${victim}" is no broker-named callback queue ` +
      "(see the allowReplyTo option)",
  ));
});

Deno.test("allowReplyTo lets fixed reply queues through, as a pattern or a function", async () => {
  await using broker = await openBroker();
  const fixed = broker.newQueue();
  await broker.channel.assertQueue(fixed, { durable: false });
  const replies: string[] = [];
  await broker.channel.consume(fixed, (message) => {
    if (message) replies.push(String(message.properties.correlationId));
  }, { noAck: true });
  const rules = [
    new RegExp(`^${fixed.replaceAll(".", "\\.")}$`, "g"),
    (name: string) => name === fixed,
  ];
  for (const [i, allowReplyTo] of rules.entries()) {
    await using _server = await startServer(broker.queue, { allowReplyTo });
    request(broker, broker.queue, fixed, `first ${i}`);
    request(broker, broker.queue, fixed, `second ${i}`); // a global RegExp keeps no state between tests
    request(broker, broker.queue, `${fixed}.other`, `other ${i}`);
    await waitFor("the replies", () => replies.length === 2 * (i + 1));
  }
  assert.deepEqual(replies, ["first 0", "second 0", "first 1", "second 1"]);
  // A rule that throws says no, and the server goes on.
  await using server = await startServer(broker.queue, {
    allowReplyTo: () => {
      throw new Error("rule broke");
    },
  });
  const { queue: replyTo, replies: honest } = await broker.replyQueue();
  request(broker, broker.queue, fixed, "thrown");
  request(broker, broker.queue, replyTo, "honest");
  await waitFor("the honest reply", () => honest.length === 1);
  assert.deepEqual(replies.length, 4);
  assert.equal(server.answered, 1);
});

Deno.test("an error reply carries type error, its code in x-error-code and its text as body; an internal error's detail stays in the server's log", async () => {
  await using broker = await openBroker();
  const server = await startServer(broker.queue);
  const { queue: replyTo, replies } = await broker.replyQueue();
  request(broker, broker.queue, replyTo, "bad", "bad");
  request(broker, broker.queue, replyTo, "fail", "fail");
  await waitFor("both replies", () => replies.length === 2);
  const [bad, fail] = ["bad", "fail"].map((id) =>
    replies.find((reply) => reply.properties.correlationId === id)!
  );
  assert.equal(bad.properties.type, "error");
  assert.equal(bad.properties.headers?.[ERROR_CODE_HEADER], "bad-request");
  assert.equal(bad.content.toString(), "bad input");
  assert.equal(fail.properties.type, "error");
  assert.equal(fail.properties.headers?.[ERROR_CODE_HEADER], "internal");
  const id = fail.content.toString().match(/^internal error \(id (\w{8})\)$/)?.[1];
  assert.ok(id, fail.content.toString());
  const sent = fail.content.toString() + JSON.stringify(fail.properties);
  for (const secret of ["dbpass", "postgres", "10.0.0.5", "insert"]) {
    assert.ok(!sent.includes(secret), `${secret} not sent`);
  }
  await server.close();
  const line = server.logged.find((line) => line.startsWith(` [!] Handler failed (id ${id}): `));
  assert.match(
    line ?? "",
    /Error: insert failed: postgres:\/\/app:dbpass@10\.0\.0\.5\/prod\n +at /,
  );
});

Deno.test("a handler's failed call to another service reaches its caller as internal, not as that call's code and queue", async () => {
  await using broker = await openBroker();
  const hidden = broker.newQueue(); // another service's queue, never declared: no-route
  await using upstream = await RpcClient.connect({ url: BROKER_URL });
  await using server = await RpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: (request) => upstream.call(hidden, request, { timeout: 2_000 }),
    log: null,
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  await assert.rejects(client.call(server.queue, "x"), (error: RpcError) => {
    assert.equal(error.code, "internal");
    assert.ok(!error.message.includes(hidden), error.message);
    return true;
  });
});
