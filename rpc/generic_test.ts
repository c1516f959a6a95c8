/**
 * Tests of the generic layer (RpcServer and RpcClient) against a real
 * broker: handlers that return text or bytes, at once or later, that throw
 * plain errors, BadRequestError or an RpcError of their own; many calls at
 * once; one client calling two queues. Concurrency, the context, time
 * limits: handlers_test.ts; reply_to and error replies: trust_test.ts.
 *
 * Run: `deno test -A rpc/generic_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { BadRequestError, RpcClient, RpcError } from "./mod.ts";
import { BROKER_URL, delay, openBroker, startLoggedServer } from "./_test_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The bytes as plain numbers, to compare contents whatever Uint8Array subclass holds them. */
const bytes = (data?: Uint8Array) => [...data ?? []];

Deno.test("a handler that returns a string: the caller gets its UTF-8 bytes", async () => {
  await using broker = await openBroker();
  await using server = await startLoggedServer(broker, (request) => {
    return `hello, ${decoder.decode(request)} ✓`;
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const reply = await client.call(server.queue, "wörld");
  assert.ok(reply instanceof Uint8Array);
  assert.deepEqual(bytes(reply), bytes(encoder.encode("hello, wörld ✓")));
  assert.equal(decoder.decode(reply), "hello, wörld ✓");
  assert.equal(server.answered, 1);
});

Deno.test("a handler of bytes: binary bodies with all 256 byte values round-trip byte for byte", async () => {
  await using broker = await openBroker();
  const received: Uint8Array[] = [];
  await using server = await startLoggedServer(broker, (request) => {
    received.push(Uint8Array.from(request)); // a copy (a Buffer's slice() is a view)
    return Uint8Array.from(request).reverse();
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const every = Uint8Array.from({ length: 256 }, (_, i) => i);
  const twice = Uint8Array.from({ length: 512 }, (_, i) => (i * 7) % 256); // not in order
  for (const request of [every, twice]) {
    const reply = await client.call(server.queue, request);
    assert.ok(received.at(-1) instanceof Uint8Array);
    assert.deepEqual(bytes(received.at(-1)), bytes(request), "the handler got the bytes sent");
    assert.deepEqual(bytes(reply), bytes(request).reverse(), "the caller got the bytes returned");
  }
  // Not text: the default log line gives only the size.
  assert.ok(server.logged.includes(" [.] request of 256 bytes"), server.logged.join("\n"));
  assert.ok(server.logged.includes(" [.] request of 512 bytes"), server.logged.join("\n"));
});

Deno.test("an async handler's result reaches its caller when it resolves", async () => {
  await using broker = await openBroker();
  await using server = await startLoggedServer(broker, async (request) => {
    const text = decoder.decode(request);
    await delay(Number(text)); // resolves after the handler has returned its promise
    return encoder.encode(`waited ${text} ms`);
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const replies = await Promise.all(["30", "0", "10"].map((ms) => client.call(server.queue, ms)));
  assert.deepEqual(replies.map((reply) => decoder.decode(reply)), [
    "waited 30 ms",
    "waited 0 ms",
    "waited 10 ms",
  ]);
  assert.equal(server.answered, 3);
});

Deno.test("a handler that throws: the caller gets code internal with an id and no detail, the log has the detail under that id, and the server goes on", async () => {
  await using broker = await openBroker();
  await using server = await startLoggedServer(broker, (request) => {
    const text = decoder.decode(request);
    if (text === "throw") throw new Error("insert failed: postgres://app:dbpass@10.0.0.5/prod");
    if (text === "reject") return Promise.reject(new Error("asked to reject"));
    return text.toUpperCase();
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const ids: string[] = [];
  for (const request of ["throw", "reject"]) {
    await assert.rejects(client.call(server.queue, request), (error: RpcError) => {
      assert.ok(error instanceof RpcError);
      assert.equal(error.name, "RpcError");
      assert.equal(error.code, "internal");
      const id = error.message.match(/^internal error \(id (\w{8})\)$/)?.[1];
      assert.ok(id, error.message);
      ids.push(id);
      return true;
    });
  }
  assert.equal(decoder.decode(await client.call(server.queue, "still here")), "STILL HERE");
  assert.equal(server.answered, 3, "two error replies and one result");
  assert.equal(client.pendingCalls, 0);
  const [thrown, rejected] = ids.map((id) =>
    server.logged.find((line) => line.startsWith(` [!] Handler failed (id ${id}): `))
  );
  assert.match(
    thrown ?? "",
    /Error: insert failed: postgres:\/\/app:dbpass@10\.0\.0\.5\/prod\n +at /,
  );
  assert.match(rejected ?? "", /Error: asked to reject\n +at /, "message and stack");
});

Deno.test("200 calls at once over one client are all answered, each with its own reply", async () => {
  await using broker = await openBroker();
  await using server = await startLoggedServer(broker, (request) => {
    return String(Number(decoder.decode(request)) * 3);
  }, { log: null });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const numbers = Array.from({ length: 200 }, (_, i) => i * 101);
  const replies = await Promise.all(numbers.map((n) => client.call(server.queue, String(n))));
  assert.deepEqual(
    replies.map((reply) => Number(decoder.decode(reply))),
    numbers.map((n) => n * 3),
  );
  assert.equal(server.answered, 200);
  assert.equal(client.pendingCalls, 0);
  assert.equal(client.droppedReplies, 0);
});

Deno.test("a BadRequestError reaches its caller with code bad-request, a handler's own RpcError with its code, both with their message", async () => {
  await using broker = await openBroker();
  await using server = await startLoggedServer(broker, (request) => {
    const text = decoder.decode(request);
    if (text === "bad") throw new BadRequestError("that is not a request");
    throw new RpcError("out-of-stock", "no more widgets");
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  await assert.rejects(client.call(server.queue, "bad"), {
    code: "bad-request",
    message: "that is not a request",
  });
  await assert.rejects(client.call(server.queue, "good"), {
    code: "out-of-stock",
    message: "no more widgets",
  });
  const warnings = server.logged.filter((line) => line.startsWith(" [!] "));
  assert.deepEqual(warnings, [
    " [!] Bad request: that is not a request",
    " [!] Handler refused (out-of-stock): no more widgets",
  ]);
});

Deno.test("one client calls two different queues, and each call gets its own server's reply", async () => {
  await using broker = await openBroker();
  await using upper = await startLoggedServer(broker, (request) => {
    return decoder.decode(request).toUpperCase();
  });
  await using reverse = await startLoggedServer(broker, (request) => {
    return [...decoder.decode(request)].reverse().join("");
  });
  await using client = await RpcClient.connect({ url: BROKER_URL });
  const callbackQueue = client.callbackQueue;
  assert.equal(decoder.decode(await client.call(upper.queue, "abc")), "ABC");
  assert.equal(decoder.decode(await client.call(reverse.queue, "abc")), "cba");
  // At once, interleaved.
  const replies = await Promise.all(
    ["one", "two", "three"].flatMap((word) => [
      client.call(upper.queue, word),
      client.call(reverse.queue, word),
    ]),
  );
  assert.deepEqual(replies.map((reply) => decoder.decode(reply)), [
    "ONE",
    "eno",
    "TWO",
    "owt",
    "THREE",
    "eerht",
  ]);
  assert.equal(client.callbackQueue, callbackQueue, "one callback queue for both");
  assert.equal(upper.answered, 4);
  assert.equal(reverse.answered, 4);
});
