/**
 * Tests for rpc_server.ts and rpc_client.ts against a real RabbitMQ broker
 * (`$AMQP_URL`, else amqp://localhost). Every test uses queues of its own
 * and deletes them, so it never meets another test or a running server.
 *
 * Run: `deno test -A` (network, environment, subprocesses, rabbitmqctl).
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel, ChannelModel, Message } from "npm:amqplib@^2.3.1";
import {
  fib,
  MAX_N,
  MAX_REQUEST_BYTES,
  type RpcServer,
  type ServerOptions,
  startServer,
} from "./rpc_server.ts";
import { FibonacciRpcClient, RpcError } from "./rpc_client.ts";

const URL = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
const quiet = { log: null };

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `condition` holds; fails the test after `timeout` ms. */
async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeout = 10_000,
) {
  const deadline = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(20);
  }
}

/**
 * A broker connection of the test's own, with a fresh queue name; disposing
 * it deletes every queue it named and closes the connection.
 */
async function openBroker() {
  const connection: ChannelModel = await amqp.connect(URL);
  const channel: Channel = await connection.createChannel();
  channel.on("error", () => {});
  const queues: string[] = [];
  const newQueue = () => {
    const queue = `rpc_test.${crypto.randomUUID()}`;
    queues.push(queue);
    return queue;
  };
  return {
    connection,
    channel,
    queue: newQueue(),
    newQueue,
    /** Messages ready in a queue (not counting unacked ones). */
    async messageCount(queue: string) {
      return (await channel.checkQueue(queue)).messageCount;
    },
    /** An exclusive reply queue and the replies it has received. */
    async replyQueue() {
      const { queue } = await channel.assertQueue("", { exclusive: true });
      const replies: Message[] = [];
      await channel.consume(queue, (message) => message && replies.push(message), { noAck: true });
      return { queue, replies };
    },
    async [Symbol.asyncDispose]() {
      for (const queue of queues) await channel.deleteQueue(queue);
      await connection.close();
    },
  };
}

/**
 * A queue of the test's own with a server on it (quiet unless `log` is given)
 * and a client calling it; disposing it closes them and deletes the queue.
 */
async function startPair(serverOptions: Omit<ServerOptions, "url" | "queue"> = {}) {
  const broker = await openBroker();
  try {
    const server = await startServer({ url: URL, queue: broker.queue, ...quiet, ...serverOptions });
    const client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue }).catch(
      async (error) => {
        await server.close();
        throw error;
      },
    );
    return {
      broker,
      server,
      client,
      async [Symbol.asyncDispose]() {
        await client.close();
        await server.close();
        await broker[Symbol.asyncDispose]();
      },
    };
  } catch (error) {
    await broker[Symbol.asyncDispose]();
    throw error;
  }
}

/** Runs one of the scripts as a user would, with a deadline. */
async function run(script: string, args: string[], timeout = 20_000) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeout),
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Starts a script in the background; disposing it kills it if still running. */
function spawn(script: string, args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stdout = "";
  let stderr = "";
  const decoder = new TextDecoder();
  const reading = Promise.all([
    child.stdout.pipeTo(
      new WritableStream({ write: (chunk) => void (stdout += decoder.decode(chunk)) }),
    ),
    child.stderr.pipeTo(
      new WritableStream({ write: (chunk) => void (stderr += decoder.decode(chunk)) }),
    ),
  ]);
  let exited = false;
  const status = child.status.then(async (status) => {
    exited = true;
    await reading;
    return status;
  });
  return {
    child,
    status,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    async [Symbol.asyncDispose]() {
      if (!exited) child.kill("SIGKILL");
      await status;
    },
  };
}

/** Closes a connection from the broker's side, as a broker restart would. */
async function closeFromBroker(connectionName: string) {
  const list = await new Deno.Command("rabbitmqctl", {
    args: ["list_connections", "--quiet", "--no-table-headers", "pid", "client_properties"],
    stdout: "piped",
    stderr: "null",
    signal: AbortSignal.timeout(20_000),
  }).output();
  const line = new TextDecoder().decode(list.stdout).split("\n")
    .find((line) => line.includes(`{"connection_name","${connectionName}"}`));
  assert.ok(line, `no broker connection named "${connectionName}"`);
  const pid = line.split("\t")[0];
  const closed = await new Deno.Command("rabbitmqctl", {
    args: ["close_connection", pid, "closed by rpc_test"],
    stdout: "null",
    stderr: "null",
    signal: AbortSignal.timeout(20_000),
  }).output();
  assert.equal(closed.code, 0, "rabbitmqctl close_connection failed");
}

/** A handler that takes its time, so calls are in progress when we act. */
function slowHandler(ms: number, seen: number[] = []) {
  return async (n: number) => {
    seen.push(n);
    await delay(ms);
    return fib(n);
  };
}

// --- fib and the happy path -------------------------------------------------

Deno.test("fib is exact for small and large n", () => {
  assert.deepEqual([0, 1, 2, 3, 10, 30].map(fib), [0n, 1n, 1n, 2n, 55n, 832040n]);
  assert.equal(fib(90), 2880067194370816120n); // past 2^53
  assert.equal(fib(1000) % 1_000_000_007n, 517691607n);
  assert.equal(fib(MAX_N).toString().length, 2090);
  for (const n of [-1, 1.5, NaN, MAX_N + 1]) assert.throws(() => fib(n), RangeError);
});

Deno.test("the server started in-process answers fib for several values", async () => {
  await using pair = await startPair();
  const { client } = pair;
  for (const n of [0, 1, 2, 10, 30, 90, 1000]) {
    assert.equal(await client.call(n), fib(n), `fib(${n})`);
  }
});

Deno.test("200 concurrent calls over one client all resolve to the right values", async () => {
  await using pair = await startPair();
  const { client } = pair;
  const numbers = Array.from({ length: 200 }, (_, i) => (i * 37) % 500);
  const results = await Promise.all(numbers.map((n) => client.call(n)));
  assert.deepEqual(results, numbers.map(fib));
  assert.equal(client.pendingCalls, 0);
  assert.equal(client.droppedReplies, 0);
});

Deno.test("the tutorial's exclusive callback queue works too", async () => {
  await using broker = await openBroker();
  await using _server = await startServer({ url: URL, queue: broker.queue, ...quiet });
  await using client = await FibonacciRpcClient.connect({
    url: URL,
    queue: broker.queue,
    replyQueue: "exclusive",
  });
  assert.deepEqual(await Promise.all([5, 6, 7].map((n) => client.call(n))), [5n, 8n, 13n]);
});

Deno.test("a duplicate reply and a reply with an unknown correlation_id are discarded", async () => {
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
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  assert.equal(await client.call(10), 55n);
  await waitFor("both extra replies", () => client.droppedReplies === 2);
  assert.equal(await client.call(11), 89n);
  await waitFor("the next extra replies", () => client.droppedReplies === 4);
  assert.equal(client.pendingCalls, 0);
});

Deno.test("two servers on one queue both receive work", async () => {
  await using broker = await openBroker();
  const options = { url: URL, queue: broker.queue, prefetch: 1, ...quiet };
  await using first = await startServer({ ...options, handler: slowHandler(10) });
  await using second = await startServer({ ...options, handler: slowHandler(10) });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  const numbers = Array.from({ length: 20 }, (_, i) => i);
  assert.deepEqual(await Promise.all(numbers.map((n) => client.call(n))), numbers.map(fib));
  assert.equal(first.answered + second.answered, 20);
  assert.ok(first.answered >= 5 && second.answered >= 5, `${first.answered} / ${second.answered}`);
});

// --- the command line -------------------------------------------------------

Deno.test("the command-line pair works end to end and the server exits 0 on SIGTERM", async () => {
  await using broker = await openBroker();
  await using server = spawn("rpc_server.ts", ["--url", URL, "--queue", broker.queue]);
  await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
  const client = await run("rpc_client.ts", [
    "--url",
    URL,
    "--queue",
    broker.queue,
    "10",
    "20",
    "30",
  ]);
  assert.equal(client.stderr, "");
  assert.equal(
    client.stdout,
    [10, 20, 30].map((n) => ` [x] Requesting fib(${n})\n`).join("") +
      " [.] Got 55\n [.] Got 6765\n [.] Got 832040\n",
  );
  assert.equal(client.code, 0);
  assert.match(server.stdout, / \[\.\] fib\(10\)\n/);
  server.child.kill("SIGTERM");
  assert.equal((await server.status).code, 0);
  assert.match(server.stdout, /SIGTERM: finishing the requests in progress/);
});

Deno.test("bad command-line input gives exit 2 and a one-line message", async () => {
  const cases: Array<[string, string[], RegExp]> = [
    ["rpc_client.ts", [], /give at least one number/],
    ["rpc_client.ts", ["abc"], /n must be a non-negative integer, got "abc"/],
    ["rpc_client.ts", ["--", "-5"], /n must be a non-negative integer, got "-5"/],
    ["rpc_client.ts", ["1.5"], /n must be a non-negative integer/],
    ["rpc_client.ts", ["--timeout", "0", "1"], /--timeout must be a positive/],
    ["rpc_client.ts", ["--timeout", "soon", "1"], /--timeout must be a positive/],
    ["rpc_client.ts", ["--reply-queue", "mine", "1"], /--reply-queue must be/],
    ["rpc_client.ts", ["--bogus", "1"], /Unknown option '--bogus'/],
    ["rpc_client.ts", ["--url", "http://x", "1"], /--url must be an amqp/],
    [
      "rpc_client.ts",
      ["--url", "amqp://:5672", "1"],
      /--url must be an amqp:\/\/ or amqps:\/\/ URL with a host/,
    ],
    ["rpc_client.ts", ["99999999999999999999"], /n is too large: "99999999999999999999"/],
    ["rpc_server.ts", ["--url", "amqp://localhost:99999"], /--url must be an amqp/],
    ["rpc_server.ts", ["--prefetch", "0"], /--prefetch must be an integer from 1 to 65535/],
    ["rpc_server.ts", ["--prefetch", "ten"], /--prefetch must be an integer/],
    ["rpc_server.ts", ["--queue"], /argument missing|requires an argument/i],
    ["rpc_server.ts", ["--verbose"], /Unknown option '--verbose'/],
  ];
  for (const [script, args, message] of cases) {
    const { code, stdout, stderr } = await run(script, args);
    const what = `${script} ${args.join(" ")}`;
    assert.equal(code, 2, `${what}: exit code`);
    assert.equal(stdout, "", what);
    assert.match(stderr, message, what);
    assert.equal(stderr.trimEnd().split("\n").length, 1, `${what}: one line, got ${stderr}`);
  }
});

Deno.test("--help prints usage and exits 0", async () => {
  for (const script of ["rpc_client.ts", "rpc_server.ts"]) {
    const { code, stdout } = await run(script, ["--help"]);
    assert.equal(code, 0);
    assert.match(stdout, /^Usage: deno run -A /);
    assert.match(stdout, /--url URL/);
  }
});

// --- the tutorial's open questions ------------------------------------------

Deno.test("a call to a queue that does not exist fails at once", async () => {
  await using broker = await openBroker(); // names the queue, never declares it
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  const started = performance.now();
  await assert.rejects(client.call(5, { timeout: 10_000 }), (error: RpcError) => {
    assert.equal(error.code, "no-route");
    assert.match(error.message, /no queue named "rpc_test\..*": is the server running\?/);
    return true;
  });
  assert.ok(performance.now() - started < 2_000, "rejected by basic.return, not by the timeout");
  assert.equal(client.pendingCalls, 0);
  assert.equal(await client.consumerCount(), undefined);
});

Deno.test("the command-line client says so when no server consumes the queue", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  const client = await run("rpc_client.ts", ["--queue", broker.queue, "--timeout", "1500", "7"]);
  assert.equal(client.code, 1);
  assert.match(client.stderr, /No server is consuming "rpc_test\..*"; waiting up to 1500 ms/);
  assert.match(client.stderr, /rpc_client: fib\(7\): no reply within 1500 ms\n$/);
  const missing = await run("rpc_client.ts", ["--queue", broker.newQueue(), "7"]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^rpc_client: no queue named .*: is the server running\?\n$/);
});

Deno.test("a timed-out call is forgotten and its late reply dropped", async () => {
  await using pair = await startPair({ handler: slowHandler(300) });
  const { client } = pair;
  await assert.rejects(client.call(10, { timeout: 100 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    assert.equal(error.message, "fib(10): no reply within 100 ms");
    return true;
  });
  assert.equal(client.pendingCalls, 0);
  await waitFor("the late reply", () => client.droppedReplies === 1);
  assert.equal(await client.call(12), 144n);
});

Deno.test("an aborted call rejects with the signal's reason and its reply is dropped", async () => {
  await using pair = await startPair({ handler: slowHandler(200) });
  const { client } = pair;
  const controller = new AbortController();
  const call = client.call(10, { signal: controller.signal });
  setTimeout(() => controller.abort(new Error("user gave up")), 50);
  await assert.rejects(call, /user gave up/);
  assert.equal(client.pendingCalls, 0);
  await assert.rejects(client.call(1, { signal: AbortSignal.abort() }), { name: "AbortError" });
  await waitFor("the reply to the aborted call", () => client.droppedReplies === 1);
  assert.equal(await client.call(12, { signal: new AbortController().signal }), 144n);
});

Deno.test("a request nobody waits for any more expires unread", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  await assert.rejects(client.call(20, { timeout: 100 }), { code: "timeout" });
  await delay(200); // the request's expiration (100 ms) has passed
  const seen: number[] = [];
  await using _server = await startServer({
    url: URL,
    queue: broker.queue,
    handler: slowHandler(0, seen),
    ...quiet,
  });
  assert.equal(await client.call(21), 10946n);
  assert.deepEqual(seen, [21], "fib(20) was never computed");
});

Deno.test("a handler failure comes back as an RpcError and the server keeps going", async () => {
  await using pair = await startPair({
    handler: (n) => {
      if (n === 13) throw new Error("thirteen is unlucky");
      return fib(n);
    },
  });
  const { server, client } = pair;
  await assert.rejects(client.call(13), (error: RpcError) => {
    assert.ok(error instanceof RpcError);
    assert.equal(error.code, "remote");
    assert.equal(error.message, "thirteen is unlucky");
    return true;
  });
  await assert.rejects(client.call(MAX_N + 1), {
    code: "remote",
    message: `n must be a decimal integer from 0 to ${MAX_N}, got "${MAX_N + 1}"`,
  });
  assert.equal(await client.call(14), 377n);
  assert.equal(server.answered, 3);
});

Deno.test("bad requests get an error reply with their correlation id and are acked", async () => {
  await using broker = await openBroker();
  const logged: string[] = [];
  await using server = await startServer({
    url: URL,
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
  assert.equal(logged.filter((line) => line.startsWith(" [!] Bad request")).length, 8);
});

Deno.test("a request without reply_to is logged and acked; one without correlation_id gets an error", async () => {
  await using broker = await openBroker();
  const logged: string[] = [];
  await using server = await startServer({
    url: URL,
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
  await waitFor("the log line", () => logged.some((line) => line.includes("no reply_to")));
  await server.close();
  assert.equal(await broker.messageCount(broker.queue), 0, "both acked");
  assert.equal(server.answered, 1);
});

Deno.test("a queue declared with other settings is used as it is", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue); // classic, as the older tutorials declare it
  const logged: string[] = [];
  await using _server = await startServer({
    url: URL,
    queue: broker.queue,
    log: (line) => logged.push(line),
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  assert.equal(await client.call(9), 34n);
  assert.match(
    logged[0],
    /exists with other settings; using it as it is \(for a quorum queue: rabbitmqctl delete_queue rpc_test\./,
  );
});

Deno.test("the server reconnects by itself after the broker closes its connection", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { server, client } = pair;
  assert.equal(await client.call(3), 2n);
  await closeFromBroker(server.connectionName);
  await waitFor("the reconnection", () => logged.some((line) => line.includes("Reconnected")));
  assert.equal(await client.call(4), 3n);
  assert.ok(logged.some((line) => line.startsWith(" [!] Lost the broker")));
});

Deno.test("the client fails calls in flight when its connection drops, then recovers", async () => {
  await using pair = await startPair({ handler: slowHandler(3_000) });
  const { client } = pair;
  // Listen for the rejection now: it comes while the broker is still closing.
  const inFlight = assert.rejects(client.call(8, { timeout: 20_000 }), (error: RpcError) => {
    assert.equal(error.code, "connection-lost");
    assert.equal(error.message, "fib(8): lost the connection to the broker");
    return true;
  });
  await closeFromBroker(client.connectionName);
  await inFlight;
  assert.equal(client.pendingCalls, 0);
  let result: bigint | undefined;
  await waitFor("a call to work again", async () => {
    result = await client.call(6, { timeout: 5_000 }).catch(() => undefined);
    return result !== undefined;
  }, 15_000);
  assert.equal(result, 8n);
});

Deno.test("a server that dies between reply and ack: the client keeps one result and drops the duplicate", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  // The first server replies, then dies before it acks.
  const doomed: ChannelModel = await amqp.connect(URL);
  const doomedChannel = await doomed.createChannel();
  let replied = false;
  await doomedChannel.consume(broker.queue, (request) => {
    if (!request || replied) return;
    const { replyTo, correlationId } = request.properties;
    doomedChannel.sendToQueue(replyTo, Buffer.from("21"), { correlationId });
    replied = true;
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  assert.equal(await client.call(8), 21n);
  await doomed.close(); // the unacked request goes back to the queue
  const seen: number[] = [];
  await using _second = await startServer({
    url: URL,
    queue: broker.queue,
    handler: slowHandler(0, seen),
    ...quiet,
  });
  await waitFor("the duplicate reply", () => client.droppedReplies === 1);
  assert.deepEqual(seen, [8], "the second server answered the redelivered request");
  assert.equal(client.pendingCalls, 0);
  assert.equal(await client.call(9), 34n);
});

Deno.test("closing the server finishes and acks the requests in progress", async () => {
  await using broker = await openBroker();
  const seen: number[] = [];
  await using server: RpcServer = await startServer({
    url: URL,
    queue: broker.queue,
    handler: slowHandler(300, seen),
    ...quiet,
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  const call = client.call(25);
  await waitFor("the request to be in progress", () => seen.length === 1);
  await server.close();
  assert.equal(await call, 75025n);
  assert.equal(await broker.messageCount(broker.queue), 0, "acked, not requeued");
  assert.equal(await client.consumerCount(), 0, "no longer consuming");
  await assert.rejects(client.call(1, { timeout: 200 }), { code: "timeout" });
});

Deno.test("SIGINT stops the command-line server and client cleanly", async () => {
  await using broker = await openBroker();
  await using server = spawn("rpc_server.ts", ["--queue", broker.queue]);
  await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
  server.child.kill("SIGINT");
  assert.equal((await server.status).code, 0);
  assert.match(server.stdout, /SIGINT: finishing the requests in progress, then exiting/);

  // Now the queue has no consumer: the client waits, and SIGINT ends the wait.
  await using client = spawn("rpc_client.ts", ["--queue", broker.queue, "5"]);
  await waitFor("the client to wait", () => client.stderr.includes("No server is consuming"));
  client.child.kill("SIGINT");
  assert.equal((await client.status).code, 130);
  assert.match(client.stderr, /rpc_client: interrupted; closing the connection\n/);
  assert.doesNotMatch(client.stderr, /error:|at /);
});

Deno.test("a password in the URL is never printed", async () => {
  const url = "amqp://guest:hunter2-secret@127.0.0.1:5672";
  await assert.rejects(startServer({ url, ...quiet }), (error: Error) => {
    assert.equal(
      error.message,
      "cannot log in to amqp://guest:***@127.0.0.1:5672: access refused (wrong user name or password?)",
    );
    return true;
  });
  for (const [script, ...args] of [["rpc_server.ts"], ["rpc_client.ts", "1"]]) {
    const { code, stdout, stderr } = await run(script, ["--url", url, ...args]);
    assert.equal(code, 1, script);
    assert.doesNotMatch(stdout + stderr, /hunter2/, script);
    assert.match(
      stderr,
      /^rpc_(server|client): cannot log in to amqp:\/\/guest:\*\*\*@127\.0\.0\.1:5672/,
    );
  }
  const vhost = await run("rpc_client.ts", [
    "--url",
    "amqp://guest:guest@127.0.0.1/no-such-vhost",
    "1",
  ]);
  assert.equal(vhost.code, 1);
  assert.equal(
    vhost.stderr,
    `rpc_client: cannot open virtual host "no-such-vhost" on amqp://guest:***@127.0.0.1/no-such-vhost ` +
      "(does it exist? rabbitmqctl list_vhosts)\n",
  );
  const refused = await run("rpc_client.ts", ["--url", "amqp://u:hunter2@127.0.0.1:1", "1"]);
  assert.equal(refused.code, 1);
  assert.equal(
    refused.stderr,
    "rpc_client: cannot connect to amqp://u:***@127.0.0.1:1: connection refused (is RabbitMQ running?)\n",
  );
});

// --- interop with the official tutorial programs ----------------------------

const PYTHON = "/usr/bin/python3"; // Debian's, where python3-pika installs
const pikaInstalled = await new Deno.Command(PYTHON, {
  args: ["-c", "import pika"],
  stdout: "null",
  stderr: "null",
}).output().then((output) => output.success, () => false);
const interop = { ignore: !pikaInstalled, sanitizeResources: true };

Deno.test({
  name: "the Python tutorial client gets its answer from our server",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    await using _server = await startServer({ url: URL, queue: broker.queue, ...quiet });
    const output = await new Deno.Command(PYTHON, {
      args: ["interop/rpc_client.py", "30"],
      env: { RPC_QUEUE: broker.queue, AMQP_URL: URL },
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(20_000),
    }).output();
    const decoder = new TextDecoder();
    assert.equal(decoder.decode(output.stderr), "");
    assert.equal(decoder.decode(output.stdout), " [x] Requesting fib(30)\n [.] Got 832040\n");
    assert.equal(output.code, 0);
  },
});

Deno.test({
  name: "our client gets its answers from the Python tutorial server",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    const server = new Deno.Command(PYTHON, {
      args: ["interop/rpc_server.py"],
      env: { RPC_QUEUE: broker.queue, AMQP_URL: URL },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    try {
      await waitFor("the Python server to consume", async () => {
        const channel = await broker.connection.createChannel();
        channel.on("error", () => {}); // the queue may not exist yet: 404
        const found = await channel.checkQueue(broker.queue).catch(() => undefined);
        await channel.close().catch(() => {});
        return (found?.consumerCount ?? 0) > 0;
      });
      await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
      assert.deepEqual(await Promise.all([0, 1, 10, 20].map((n) => client.call(n))), [
        0n,
        1n,
        55n,
        6765n,
      ]);
      const cli = await run("rpc_client.ts", ["--queue", broker.queue, "25"]);
      assert.equal(cli.stdout, " [x] Requesting fib(25)\n [.] Got 75025\n");
      assert.equal(cli.code, 0);
    } finally {
      server.kill("SIGTERM");
      await server.status;
      await server.stderr.cancel();
    }
  },
});

Deno.test("with --queue-type classic, our server and the other tutorials declare the same queue", async () => {
  await using broker = await openBroker();
  const tutorialDeclare = async (queue: string) => {
    // What the official servers (and Node's client) do: a non-durable classic queue.
    const channel = await broker.connection.createChannel();
    channel.on("error", () => {});
    try {
      await channel.assertQueue(queue, { durable: false });
      return "ok";
    } catch (error) {
      return `refused: ${(error as { code?: number }).code}`;
    } finally {
      await channel.close().catch(() => {});
    }
  };
  // Theirs first, then ours: ours declares the same thing, so no 406 and no warning.
  assert.equal(await tutorialDeclare(broker.queue), "ok");
  const logged: string[] = [];
  await using _first = await startServer({
    url: URL,
    queue: broker.queue,
    queueType: "classic",
    log: (line) => logged.push(line),
  });
  assert.deepEqual(logged, []);
  // Ours first, then theirs: accepted as well.
  const second = broker.newQueue();
  await using _second = await startServer({
    url: URL,
    queue: second,
    queueType: "classic",
    ...quiet,
  });
  assert.equal(await tutorialDeclare(second), "ok");
  // A quorum queue (our default) is what the other tutorials cannot declare.
  const third = broker.newQueue();
  await using _third = await startServer({ url: URL, queue: third, ...quiet });
  assert.equal(await tutorialDeclare(third), "refused: 406");
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  assert.equal(await client.call(40), 102334155n);
});

Deno.test("deno task demo shows replies matched by correlation id, then exits cleanly", async () => {
  const { code, stdout, stderr } = await run("rpc_demo.ts", []);
  assert.equal(stderr, "");
  assert.equal(code, 0);
  assert.match(stdout, /client {2}\[<\] reply \w{8}: matches fib\(1000\)/);
  assert.match(stdout, /fib\(90\) = 2880067194370816120\n/);
  assert.match(stdout, /no call waits for it, dropped\n {2}replies dropped so far: 1\n/);
  assert.match(stdout, /RpcError: n must be a decimal integer from 0 to 10000, got "20000"/);
  assert.match(stdout, /answered 8 requests\n$/);
});

Deno.test("a server whose queue is deleted under it declares it again and goes on", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { broker, client } = pair;
  assert.equal(await client.call(5), 5n);
  await broker.channel.deleteQueue(broker.queue);
  await waitFor(
    "the server to notice",
    () => logged.some((line) => line.includes("cancelled the consumer")),
  );
  await waitFor("the queue to be back", () => logged.some((line) => line.includes("Reconnected")));
  assert.equal(await client.call(6), 8n);
});

Deno.test("a bad AMQP_URL is a usage error, with the password hidden", async () => {
  for (const script of ["rpc_server.ts", "rpc_client.ts"]) {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, "1"].slice(0, script === "rpc_client.ts" ? 4 : 3),
      env: { AMQP_URL: "http://user:hunter2@localhost" },
      stdout: "null",
      stderr: "piped",
      signal: AbortSignal.timeout(20_000),
    }).output();
    assert.equal(output.code, 2, script);
    assert.equal(
      new TextDecoder().decode(output.stderr),
      `${script.replace(".ts", "")}: AMQP_URL must be an amqp:// or amqps:// URL with a host, ` +
        `got "http://user:***@localhost/" (see --help)\n`,
    );
  }
});
