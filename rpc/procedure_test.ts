/**
 * Tests of rpc/procedure.ts: contract-first JSON procedures with real zod 4
 * and valibot 1 schemas (the library depends on neither), against the
 * broker; and, checked by `deno check`, that types flow from the schemas.
 *
 * Run: `deno test -A rpc/procedure_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { z } from "npm:zod@4.6.7";
import * as v from "npm:valibot@1.5.0";
import { type Procedure, procedure, RpcClient, RpcError, RpcServer } from "./mod.ts";
import { BROKER_URL, openBroker, quiet, waitFor } from "./_test_util.ts";

const sumContract = (queue: string) =>
  procedure(queue, {
    request: z.object({ numbers: z.array(z.number()) }),
    reply: z.object({ total: z.number() }),
  });

/** Rejects with an RpcError of this code whose message matches. */
async function rejectsWith(promise: Promise<unknown>, code: string, message: RegExp) {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof RpcError, `not an RpcError: ${error}`);
    assert.match(error.message, message);
    assert.equal(error.code, code, `code ${error.code}, message: ${error.message}`);
    return true;
  });
}

Deno.test("a zod contract: the handler gets the validated request, the caller the validated reply", async () => {
  await using broker = await openBroker();
  const sum = sumContract(broker.queue);
  const seen: unknown[] = [];
  await using _server = await RpcServer.serve(sum, (request, context) => {
    seen.push(request, context.queue);
    return { total: request.numbers.reduce((a, b) => a + b, 0) };
  }, { url: BROKER_URL, ...quiet });
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  assert.deepEqual(await client.invoke(sum, { numbers: [1, 2, 3.5] }), { total: 6.5 });
  assert.deepEqual(seen, [{ numbers: [1, 2, 3.5] }, broker.queue]);
});

Deno.test("requests and replies are JSON with content_type application/json", async () => {
  await using broker = await openBroker();
  const sum = sumContract(broker.queue);
  await using _server = await RpcServer.serve(sum, ({ numbers }) => ({ total: numbers.length }), {
    url: BROKER_URL,
    ...quiet,
  });
  // The reply, as a caller without the library sees it.
  const { queue: replyTo, replies } = await broker.replyQueue();
  broker.channel.sendToQueue(broker.queue, Buffer.from('{"numbers":[7,8]}'), {
    replyTo,
    correlationId: "c1",
  });
  await waitFor("the reply", () => replies.length === 1);
  assert.equal(replies[0].properties.contentType, "application/json");
  assert.equal(replies[0].content.toString(), '{"total":2}');
  // The request, as a server without the library sees it.
  const raw = broker.newQueue();
  await broker.channel.assertQueue(raw, { exclusive: true });
  const requests: { contentType: unknown; body: string }[] = [];
  await broker.channel.consume(raw, (message) => {
    if (!message) return;
    requests.push({
      contentType: message.properties.contentType,
      body: message.content.toString(),
    });
    broker.channel.sendToQueue(message.properties.replyTo, Buffer.from('{"total":15}'), {
      correlationId: message.properties.correlationId,
    });
  }, { noAck: true });
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  assert.deepEqual(await client.invoke(sumContract(raw), { numbers: [7, 8] }), { total: 15 });
  assert.deepEqual(requests, [{ contentType: "application/json", body: '{"numbers":[7,8]}' }]);
});

Deno.test("an invalid request is refused before sending, with bad-request naming the path and the schema's message", async () => {
  await using broker = await openBroker();
  // No server and no queue: a request that went out would fail with no-route.
  const contract = procedure(broker.queue, {
    request: v.object({ numbers: v.array(v.number()) }),
  });
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  await rejectsWith(
    // deno-lint-ignore no-explicit-any
    client.invoke(contract, { numbers: [1, "two"] } as any),
    "bad-request",
    /^call to "rpc_test\.[^"]+": invalid request: numbers\[1\]: .*number/i,
  );
  await rejectsWith(
    client.invoke(procedure<bigint, unknown>(broker.queue), 1n),
    "bad-request",
    /the request is not JSON/,
  );
  assert.equal(client.pendingCalls, 0);
});

Deno.test("a server refuses raw bytes, bad JSON and a wrong shape with bad-request saying where", async () => {
  await using broker = await openBroker();
  const sum = sumContract(broker.queue);
  let handled = 0;
  await using _server = await RpcServer.serve(sum, () => ({ total: ++handled }), {
    url: BROKER_URL,
    ...quiet,
  });
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  const call = (body: Uint8Array | string) => client.call(broker.queue, body);
  await rejectsWith(call(new Uint8Array([0xff, 0xfe, 0x00])), "bad-request", /not JSON/);
  await rejectsWith(call('{"numbers": [1,'), "bad-request", /not JSON/);
  await rejectsWith(
    call('{"numbers": [1, "two"]}'),
    "bad-request",
    /invalid request: numbers\[1\]: .*number/i,
  );
  await rejectsWith(call("[]"), "bad-request", /invalid request: \(root\): /);
  assert.equal(handled, 0);
  // The server goes on.
  assert.deepEqual(await client.invoke(sum, { numbers: [] }), { total: 1 });
});

Deno.test("a reply that breaks the contract never reaches the caller as a value", async () => {
  await using broker = await openBroker();
  const contract = sumContract(broker.queue);
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  // A server without the contract: the caller's check catches its reply.
  const replies = ['{"total":"six"}', "six", ""];
  {
    let next = 0;
    await using _server = await RpcServer.start({
      url: BROKER_URL,
      queue: broker.queue,
      handler: () => replies[next++],
      ...quiet,
    });
    await rejectsWith(
      client.invoke(contract, { numbers: [6] }),
      "bad-reply",
      /the reply breaks the contract: total: .*number/i,
    );
    await rejectsWith(client.invoke(contract, { numbers: [6] }), "bad-reply", /not JSON/);
    await rejectsWith(client.invoke(contract, { numbers: [6] }), "bad-reply", /not JSON/);
  }
  // A server with the contract and a handler that breaks it: the server's
  // own bug, so an `internal` error reply, and the detail in its log only.
  const other = sumContract(broker.newQueue());
  const logged: string[] = [];
  // deno-lint-ignore no-explicit-any
  await using _server = await RpcServer.serve(other, () => ({ total: "six" }) as any, {
    url: BROKER_URL,
    log: (line) => logged.push(line),
  });
  await rejectsWith(
    client.invoke(other, { numbers: [6] }),
    "internal",
    /^internal error \(id \w+\)$/,
  );
  assert.ok(
    logged.some((line) => /the handler's reply breaks the contract: total: .*number/i.test(line)),
    logged.join("\n"),
  );
});

Deno.test("valibot: defaults and transforms apply on the side that reads", async () => {
  await using broker = await openBroker();
  const greet = procedure(broker.queue, {
    request: v.object({ name: v.string(), excited: v.optional(v.boolean(), false) }),
    reply: v.pipe(v.string(), v.transform((text) => text.length)),
  });
  await using _server = await RpcServer.serve(
    greet,
    ({ name, excited }) => `hello ${name}${excited ? "!" : ""}`,
    { url: BROKER_URL, ...quiet },
  );
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  assert.equal(await client.invoke(greet, { name: "ada" }), "hello ada".length);
  assert.equal(await client.invoke(greet, { name: "ada", excited: true }), "hello ada!".length);
});

Deno.test("an async schema (valibot's objectAsync) is awaited on both sides", async () => {
  await using broker = await openBroker();
  const even = v.pipeAsync(v.number(), v.checkAsync(async (n) => (await n) % 2 === 0, "odd"));
  const halve = procedure(broker.queue, {
    request: v.objectAsync({ n: even }),
    reply: v.objectAsync({ half: v.number() }),
  });
  await using _server = await RpcServer.serve(halve, ({ n }) => ({ half: n / 2 }), {
    url: BROKER_URL,
    ...quiet,
  });
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  assert.deepEqual(await client.invoke(halve, { n: 8 }), { half: 4 });
  await rejectsWith(client.invoke(halve, { n: 7 }), "bad-request", /invalid request: n: odd$/);
  await rejectsWith(
    client.call(broker.queue, '{"n": 7}'),
    "bad-request",
    /invalid request: n: odd$/,
  );
});

Deno.test("procedure<Request, Reply>(queue): typed JSON without run-time checks", async () => {
  await using broker = await openBroker();
  const echo = procedure<{ text: string }, { text: string; length: number }>(broker.queue);
  await using _server = await RpcServer.serve(echo, (request) => ({
    text: request.text,
    length: request.text.length,
  }), { url: BROKER_URL, ...quiet });
  await using client = await RpcClient.connect({ url: BROKER_URL, timeout: 10_000 });
  assert.deepEqual(await client.invoke(echo, { text: "héllo" }), { text: "héllo", length: 5 });
});

Deno.test("procedure() refuses what is not a queue or a Standard Schema", () => {
  assert.throws(() => procedure(""), TypeError);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => procedure("q", { request: {} as any }), /request must be a Standard Schema/);
});

/**
 * Never run: `deno check` (and `deno test`) compile it, and each
 * `@ts-expect-error` fails the check if its line is NOT an error.
 */
function typesFlowFromTheSchemas(client: RpcClient, sum: ReturnType<typeof sumContract>) {
  // @ts-expect-error: numbers must be numbers
  client.invoke(sum, { numbers: ["1"] });
  // @ts-expect-error: numbers is required
  client.invoke(sum, {});
  // @ts-expect-error: total is a number
  const _total: Promise<{ total: string }> = client.invoke(sum, { numbers: [1] });
  // @ts-expect-error: the handler must return { total: number }
  RpcServer.serve(sum, () => ({ sum: 1 }));
  // @ts-expect-error: the handler gets { numbers: number[] }
  RpcServer.serve(sum, (request: { numbers: string[] }) => ({ total: request.numbers.length }));
  const greet = procedure("greet", { request: v.object({ name: v.string() }) });
  // @ts-expect-error: name is a string (valibot)
  client.invoke(greet, { name: 1 });
  const typed: Procedure<{ n: number }, string> = procedure<{ n: number }, string>("q");
  // @ts-expect-error: n is a number
  client.invoke(typed, { n: "1" });
  const reply: Promise<string> = client.invoke(typed, { n: 1 });
  return reply;
}

Deno.test("types flow from the schemas (the @ts-expect-error lines, checked by deno check)", () => {
  assert.equal(typeof typesFlowFromTheSchemas, "function");
});
