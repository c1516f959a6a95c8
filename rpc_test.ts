/**
 * rpc_test.ts: the lesson's tests, for rpc_server.ts, rpc_client.ts and rpc_demo.ts, against a
 * real RabbitMQ (`$AMQP_URL`, else amqp://localhost).
 *
 * Each test uses a queue of its own (`rpc_test.<uuid>`) and deletes it, so it never meets another
 * test or a server someone runs on `rpc_queue`; each ends, by its PID, every process it started.
 * The server runs as its command line (its output is what the tests read); the client runs as
 * its command line or in this process. The three tests that run our Python programs in interop/
 * need Debian's python3 with pika (python3-pika); without it they are skipped, and say why.
 *
 *     deno test -A rpc_test.ts
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import amqp, { type ChannelModel, type Message } from "npm:amqplib@2.3.1";
import { fib } from "./rpc_server.ts";
import { startClient } from "./rpc_client.ts";
import { BROKER, spawn as spawnProgram } from "./_test_spawn.ts";

/** The broker every test uses. */
/** This folder: the scripts and interop/ are here. */
const HERE = import.meta.dirname!;
/** How the lesson's server declares its queue; a test that declares it first does the same. */
const QUORUM = { durable: true, arguments: { "x-queue-type": "quorum" } };
/** Debian's python3, where python3-pika installs; it runs our stand-ins in interop/. */
const PYTHON = "/usr/bin/python3";
/** Whether PYTHON runs and has pika; no python3 at all is a no, too. */
async function hasPika(): Promise<boolean> {
  try {
    const command = new Deno.Command(PYTHON, {
      args: ["-c", "import pika"],
      stdout: "null",
      stderr: "null",
    });
    return (await command.output()).success;
  } catch {
    return false;
  }
}
const pikaMissing = !(await hasPika());
if (pikaMissing) {
  console.log(
    "rpc_test.ts: skipping the 3 tests that run interop/*.py: they need /usr/bin/python3 with pika " +
      "(apt-get install python3-pika)",
  );
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` every 20 ms until it gives something truthy, and returns that; fails after `ms`. */
async function waitFor<T>(what: string, probe: () => T | Promise<T>, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value as Exclude<T, false | null | undefined | 0 | "">;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(20);
  }
}

/** fib(n) by the test's own loop. */
function expected(n: number): bigint {
  let [previous, current] = [0n, 1n];
  for (let i = 0; i < n; i++) [previous, current] = [current, previous + current];
  return previous;
}

/** A connection of the test's own and fresh queue names; disposing it deletes the queues. */
async function openBroker() {
  const connection: ChannelModel = await amqp.connect(BROKER);
  connection.on("error", () => {});
  const channel = await connection.createChannel();
  channel.on("error", () => {});
  const queues: string[] = [];
  const newQueue = () => queues[queues.push(`rpc_test.${crypto.randomUUID()}`) - 1];
  /** The queue's counts, asked on a channel of its own (a missing queue closes the channel). */
  async function check(queue: string) {
    const own = await connection.createChannel();
    own.on("error", () => {});
    try {
      return await own.checkQueue(queue);
    } catch {
      return undefined;
    } finally {
      await own.close().catch(() => {});
    }
  }
  return {
    channel,
    queue: newQueue(),
    newQueue,
    /** Messages ready in the queue, not counting those a consumer holds unacked. */
    ready: async (queue: string) => (await check(queue))?.messageCount,
    exists: async (queue: string) => (await check(queue)) !== undefined,
    async [Symbol.asyncDispose]() {
      const own = await connection.createChannel();
      for (const queue of queues) await own.deleteQueue(queue);
      await connection.close();
    },
  };
}

/** A program in the background (see _test_spawn.ts), in this folder unless `cwd` says otherwise. */
function spawn(command: string, args: string[], env: Record<string, string> = {}, cwd = HERE) {
  return spawnProgram(command, args, env, cwd);
}

/** One of the lesson's scripts, as the README runs it: only --allow-net and --allow-env. */
function deno(script: string, args: string[], env: Record<string, string> = {}, cwd = HERE) {
  return spawn(Deno.execPath(), ["run", "--allow-net", "--allow-env", script, ...args], env, cwd);
}

/** The lesson's server, its command line, on `queue`; resolves once it awaits requests. */
async function serve(queue: string, env: Record<string, string> = {}, cwd = HERE) {
  const server = deno("rpc_server.ts", ["--queue", queue], env, cwd);
  await waitFor("the server", () => server.stdout.includes(AWAITING) || server.exited, 30_000);
  assert.ok(!server.exited, `the server exited: ${server.stderr}`);
  return server;
}

/** Ctrl-C to a server: it closes its connection (what it has not acked goes back), exits 0. */
async function stop(server: ReturnType<typeof spawn>) {
  server.child.kill("SIGINT");
  assert.equal((await server.status).code, 0, server.stderr);
  assert.equal(server.stderr, "");
}

const AWAITING = " [x] Awaiting RPC requests\n";
/** A correlation_id as the client makes them: crypto.randomUUID(). */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Runs a program to its end (killed after 30 s): its exit code and output. */
async function run(program: ReturnType<typeof spawn>) {
  await using running = program;
  const killer = setTimeout(() => running.child.kill("SIGKILL"), 30_000);
  const { code } = await running.status.finally(() => clearTimeout(killer));
  return { code, stdout: running.stdout, stderr: running.stderr };
}

/**
 * A TCP proxy of the test's own in front of the broker. `cut()` drops every link at once with
 * no AMQP close: to a program, the broker has vanished, as when a host dies.
 */
function startProxy() {
  const broker = new URL(BROKER);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const sockets = new Set<Deno.Conn>();
  const accepting = (async () => {
    try {
      for await (const downstream of listener) {
        const upstream = await Deno.connect({
          hostname: broker.hostname.replace(/^\[|\]$/g, "") || "localhost",
          port: Number(broker.port) || 5672,
        });
        sockets.add(downstream).add(upstream);
        downstream.readable.pipeTo(upstream.writable).catch(() => {});
        upstream.readable.pipeTo(downstream.writable).catch(() => {});
      }
    } catch {
      // the listener was closed
    }
  })();
  const cut = () => {
    for (const closable of [listener, ...sockets]) {
      try {
        closable.close();
      } catch {
        // closed already
      }
    }
    sockets.clear();
  };
  const url = Object.assign(new URL(BROKER), { hostname: "127.0.0.1", port: listener.addr.port });
  return {
    url: url.href,
    cut,
    async [Symbol.asyncDispose]() {
      cut();
      await accepting;
    },
  };
}

/** The lines the client prints before any answer, for `numbers`. */
const requesting = (...numbers: number[]) =>
  numbers.map((n) => ` [x] Requesting fib(${n})\n`).join("");

/**
 * After its server stopped, `broker.queue` is empty: every request was acked (one that was not
 * goes back to the queue when its server closes, and stays). Polled: a quorum queue applies the
 * last ack and the close in turn.
 */
function allAcked(broker: Awaited<ReturnType<typeof openBroker>>) {
  const empty = async () => (await broker.ready(broker.queue)) === 0;
  return waitFor("every request acked", empty, 5_000);
}

/** The next request waiting in `queue`, taken off it (as a server would, but with no ack). */
function takeRequest(broker: Awaited<ReturnType<typeof openBroker>>, queue: string) {
  return waitFor("a request", () => broker.channel.get(queue, { noAck: true }));
}

/** Answers `request` as a server would: to its reply_to, with its correlation_id. */
function answer(broker: Awaited<ReturnType<typeof openBroker>>, request: Message, body: string) {
  const { replyTo, correlationId } = request.properties;
  broker.channel.sendToQueue(replyTo, Buffer.from(body), { correlationId });
}

/** Sends `bodies` to `queue` and gives their replies, in order, as [type, body]. */
async function ask(
  broker: Awaited<ReturnType<typeof openBroker>>,
  queue: string,
  bodies: string[],
) {
  const { queue: replyTo } = await broker.channel.assertQueue("", { exclusive: true });
  const replies: Message[] = [];
  await broker.channel.consume(replyTo, (reply) => reply && replies.push(reply), { noAck: true });
  for (const [i, body] of bodies.entries()) {
    broker.channel.sendToQueue(queue, Buffer.from(body), { replyTo, correlationId: `q${i}` });
  }
  await waitFor("the replies", () => replies.length === bodies.length, 30_000);
  return replies.map((reply) => [reply.properties.type, reply.content.toString()]);
}

// ─── The tutorial ────────────────────────────────────────────────────────────

Deno.test("fib(n) is exact for small and large n", () => {
  assert.deepEqual([0, 1, 2, 10, 30].map(fib), [0n, 1n, 1n, 55n, 832040n]);
  assert.equal(fib(90), 2880067194370816120n);
  assert.equal(fib(1000), expected(1000));
  assert.equal(fib(10_000), expected(10_000));
});

Deno.test("the client gets exact answers from the server, one call or many at once", async () => {
  await using broker = await openBroker();
  await using server = await serve(broker.queue);
  const client = await startClient(BROKER, broker.queue);
  try {
    assert.equal(await client.call(30), 832040n);
    const numbers = [0, 1, 2, 10, 30, 90, 1000];
    assert.deepEqual(
      await Promise.all(numbers.map((n) => client.call(n))),
      [0n, 1n, 1n, 55n, 832040n, 2880067194370816120n, expected(1000)],
    );
    // The tutorial's callback queue: named by the broker.
    assert.match(client.callbackQueue, /^amq\.gen-/);
  } finally {
    await client.close();
  }
  await stop(server);
  assert.equal(
    server.stdout,
    AWAITING + [30, 0, 1, 2, 10, 30, 90, 1000].map((n) => ` [.] fib(${n})\n`).join(""),
  );
  // rpc_queue is durable and quorum: declaring it so again is accepted.
  await broker.channel.assertQueue(broker.queue, QUORUM);
});

Deno.test("a duplicate reply and a reply with an unknown correlation_id are dropped", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // as the server declares it
  const client = await startClient(BROKER, broker.queue);
  try {
    const first = client.call(20); // no server: the test answers, by hand
    const request = await takeRequest(broker, broker.queue);
    const { replyTo, correlationId, expiration } = request.properties;
    assert.equal(request.content.toString(), "20");
    assert.equal(replyTo, client.callbackQueue);
    assert.match(correlationId, UUID);
    assert.equal(expiration, "30000"); // the call's timeout
    // A stray reply, then the answer, then the same answer again (as a server that died before
    // its ack, and another that answered the redelivered request, would send it).
    const stray = { correlationId: "unknown-correlation-id" };
    broker.channel.sendToQueue(replyTo, Buffer.from("999"), stray);
    answer(broker, request, "6765");
    answer(broker, request, "999");
    assert.equal(await first, 6765n);
    // The duplicate is dropped: the next call gets its own answer, which comes after it.
    const second = client.call(21);
    answer(broker, await takeRequest(broker, broker.queue), "10946");
    assert.equal(await second, 10946n);
  } finally {
    await client.close();
  }
});

Deno.test("the client prints each answer as soon as it, and those asked before it, are in", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // no server: the test answers
  const args = ["--queue", broker.queue, "--verbose", "10", "20", "30"];
  await using client = deno("rpc_client.ts", args);
  const requests = [
    await takeRequest(broker, broker.queue),
    await takeRequest(broker, broker.queue),
    await takeRequest(broker, broker.queue),
  ];
  assert.deepEqual(requests.map((request) => request.content.toString()), ["10", "20", "30"]);
  // fib(30)'s answer first: it waits for those of fib(10) and fib(20).
  answer(broker, requests[2], "832040");
  answer(broker, requests[0], "55");
  await waitFor("fib(10)'s answer", () => client.stdout.includes(" [.] Got 55\n"));
  // A stray and a duplicate: dropped, and said so with --verbose.
  const { replyTo } = requests[0].properties;
  broker.channel.sendToQueue(replyTo, Buffer.from("1"), { correlationId: "stray-id" });
  answer(broker, requests[0], "55");
  await waitFor(
    "both dropped",
    () => client.stderr.split("no call waits for it, dropped").length === 3,
  );
  assert.equal(client.stdout, requesting(10, 20, 30) + " [.] Got 55\n");
  answer(broker, requests[1], "6765");
  const { code, stdout, stderr } = await run(client);
  assert.equal(code, 0, stderr);
  assert.equal(stdout, requesting(10, 20, 30) + " [.] Got 55\n [.] Got 6765\n [.] Got 832040\n");
  const id = (i: number) => requests[i].properties.correlationId.slice(0, 8);
  const replies = stderr.split("\n").filter((line) => line.startsWith(" [<]"));
  assert.deepEqual(replies, [
    ` [<] reply ${id(2)}: matches fib(30)`,
    ` [<] reply ${id(0)}: matches fib(10)`,
    " [<] reply stray-id: no call waits for it, dropped",
    ` [<] reply ${id(0)}: no call waits for it, dropped`,
    ` [<] reply ${id(1)}: matches fib(20)`,
  ]);
});

// ─── What the tutorial leaves open ───────────────────────────────────────────

Deno.test("a bad request gets an error reply and is acked, and the server goes on", async () => {
  await using broker = await openBroker();
  await using server = await serve(broker.queue);
  const { queue: replyTo } = await broker.channel.assertQueue("", { exclusive: true });
  const replies: Message[] = [];
  await broker.channel.consume(replyTo, (reply) => reply && replies.push(reply), { noAck: true });
  const refusal = (got: string) => `n must be from 0 to 10000, got ${got}`;
  const cases: Array<[Buffer, string]> = [
    [Buffer.from("abc"), refusal('"abc"')],
    [Buffer.from("-5"), refusal('"-5"')],
    [Buffer.from("1.5"), refusal('"1.5"')],
    [Buffer.from(""), refusal('""')],
    [Buffer.from("10001"), refusal('"10001"')],
    [Buffer.from("9".repeat(30)), refusal(`"${"9".repeat(30)}"`)],
    [Buffer.alloc(1_000_000, "7"), refusal(`"${"7".repeat(40)}"`)],
    [Buffer.from([0xff, 0xfe, 0x31]), refusal('"\uFFFD\uFFFD1"')],
    [Buffer.from("a\nb"), refusal('"a\\nb"')], // on one line in the server's log, too
    [Buffer.from(" 12\n"), ""], // white space around the digits is fine
  ];
  for (const [i, [body]] of cases.entries()) {
    broker.channel.sendToQueue(broker.queue, body, { replyTo, correlationId: `c${i}` });
  }
  await waitFor("every reply", () => replies.length === cases.length);
  for (const [i, [body, message]] of cases.entries()) {
    const reply = replies.find((reply) => reply.properties.correlationId === `c${i}`);
    assert.ok(reply, `a reply to request ${i}`);
    const what = JSON.stringify(body.subarray(0, 20).toString());
    assert.equal(reply.properties.type, message ? "error" : undefined, what);
    assert.equal(reply.content.toString(), message || "144", what);
  }
  const client = await startClient(BROKER, broker.queue);
  assert.equal(await client.call(10), 55n); // the server goes on
  await client.close();
  await stop(server); // requests not acked would go back to the queue now
  await allAcked(broker);
  const lines = server.stdout.split("\n");
  assert.equal(lines.filter((line) => line.startsWith(" [!] Bad request: ")).length, 9);
  assert.ok(lines.includes(" [.] fib(12)") && lines.includes(" [.] fib(10)"), server.stdout);
});

Deno.test("a request whose reply_to names another queue gets no reply, and is acked", async () => {
  await using broker = await openBroker();
  await using server = await serve(broker.queue);
  const victim = broker.newQueue(); // say, another service's work queue
  await broker.channel.assertQueue(victim);
  // reply_to: another queue, the request queue itself, a name like a callback queue's, none.
  for (const replyTo of [victim, broker.queue, `${victim}.amq.gen-x`, undefined]) {
    const body = Buffer.from("30");
    broker.channel.sendToQueue(broker.queue, body, { replyTo, correlationId: "not-for-you" });
  }
  // Then a request with a callback queue the broker named, on the same channel: it comes after
  // them in the queue, and the server takes one request at a time, in order.
  assert.deepEqual(await ask(broker, broker.queue, ["10"]), [[undefined, "55"]]);
  assert.equal(await broker.ready(victim), 0);
  await stop(server);
  await allAcked(broker);
  const refused = server.stdout.split("\n").filter((line) => line.startsWith(" [!] No reply to "));
  assert.deepEqual(refused, [
    ` [!] No reply to "${victim}": not a callback queue`,
    ` [!] No reply to "${broker.queue}": not a callback queue`,
    ` [!] No reply to "${victim}.amq.gen-x": not a callback queue`,
    ` [!] No reply to "": not a callback queue`,
  ]);
});

Deno.test({
  name:
    "requests whose reply_to and correlation_id are not UTF-8 are acked, and the server goes on" +
    (pikaMissing ? " (skipped: needs /usr/bin/python3 with pika)" : ""),
  ignore: pikaMissing,
  async fn() {
    await using broker = await openBroker();
    await using server = await serve(broker.queue);
    const { queue: replyTo } = await broker.channel.assertQueue("", { exclusive: true });
    // Python can put raw bytes where amqplib only sends UTF-8: interop/hostile_publish.py.
    const publish = ["interop/hostile_publish.py", "--queue", broker.queue, "--count", "4"];
    for (
      const args of [publish, [...publish, "--field", "correlation_id", "--reply-to", replyTo]]
    ) {
      const published = await run(spawn(PYTHON, args));
      assert.equal(published.code, 0, published.stderr);
    }
    const client = await startClient(BROKER, broker.queue);
    assert.equal(await client.call(10), 55n); // after the eight, in the queue's order
    await client.close();
    await stop(server);
    await allAcked(broker); // all acked
    const lines = server.stdout.split("\n");
    // Raw reply_to: not a callback queue. A raw correlation_id of 100 bytes cannot be sent back
    // (a short string holds 255 bytes, and each bad byte reads as 3); one of 4 bytes can.
    assert.equal(
      lines.filter((line) => line.startsWith(" [!] No reply to ")).length,
      4,
      server.stdout,
    );
    assert.equal(
      lines.filter((line) => line.startsWith(" [!] Cannot reply: ")).length,
      2,
      server.stdout,
    );
    assert.equal(await broker.ready(replyTo), 2);
  },
});

Deno.test("the client declares no request queue, and a call nobody answers times out", async () => {
  await using broker = await openBroker();
  const client = await startClient(BROKER, broker.queue, 300);
  try {
    const started = Date.now();
    const outcome = await client.call(7);
    assert.ok(outcome instanceof Error);
    assert.equal(outcome.message, "fib(7): no reply within 300 ms");
    assert.ok(Date.now() - started >= 290);
    assert.equal(await broker.exists(broker.queue), false);
  } finally {
    await client.close();
  }
});

Deno.test("a request that no server takes expires when its caller gives up, and what came is printed", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // as the server declares it; no server
  const args = ["--queue", broker.queue, "--timeout", "1500", "7", "8"];
  await using client = deno("rpc_client.ts", args);
  answer(broker, await takeRequest(broker, broker.queue), "13"); // fib(7), by hand
  await waitFor("fib(8)'s request, waiting", async () => (await broker.ready(broker.queue)) === 1);
  assert.deepEqual(await run(client), {
    code: 1,
    stdout: requesting(7, 8) + " [.] Got 13\n",
    stderr: "rpc_client: fib(8): no reply within 1500 ms\n",
  });
  // The broker drops it (its expiration is the client's timeout): no server computes it later.
  await waitFor("the request to expire", async () => (await broker.ready(broker.queue)) === 0);
});

Deno.test("a lost connection fails every pending call at once", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // and no server: the calls wait
  await using proxy = startProxy();
  const client = await startClient(proxy.url, broker.queue);
  const calls = [1, 2, 3].map((n) => client.call(n));
  await waitFor("the three requests", async () => (await broker.ready(broker.queue)) === 3);
  const started = Date.now();
  proxy.cut();
  const outcomes = await Promise.all(calls);
  assert.deepEqual(
    outcomes.map((outcome) => outcome instanceof Error && outcome.message),
    [1, 2, 3].map((n) => `fib(${n}): lost the connection to the broker`),
  );
  assert.ok(Date.now() - started < 5_000, "at once, not at the timeout");
  await assert.rejects(client.close()); // closed already
});

// ─── The command lines ───────────────────────────────────────────────────────

Deno.test("the command-line server and client work end to end, and Ctrl-C stops the server", async () => {
  await using broker = await openBroker();
  const queue = ["--queue", broker.queue];
  await using server = await serve(broker.queue);
  assert.deepEqual(await run(deno("rpc_client.ts", [...queue, "30"])), {
    code: 0,
    stdout: " [x] Requesting fib(30)\n [.] Got 832040\n",
    stderr: "",
  });
  assert.deepEqual(await run(deno("rpc_client.ts", [...queue, "10", "20", "30"])), {
    code: 0,
    stdout: requesting(10, 20, 30) + " [.] Got 55\n [.] Got 6765\n [.] Got 832040\n",
    stderr: "",
  });
  // --verbose shows, on stderr, each request and how its reply finds it.
  const verbose = await run(deno("rpc_client.ts", [...queue, "--verbose", "12"]));
  assert.equal(verbose.stdout, " [x] Requesting fib(12)\n [.] Got 144\n");
  assert.match(
    verbose.stderr,
    /^ \[>\] fib\(12\), correlation_id (\w{8}), reply_to amq\.gen-\S+\n \[<\] reply \1: matches fib\(12\)\n$/,
  );
  // The least it needs: the broker's host and port, and AMQP_URL (what the README shows).
  const url = new URL(BROKER);
  const net = `--allow-net=${url.hostname}:${url.port || 5672}`;
  const scoped = ["run", net, "--allow-env=AMQP_URL", "rpc_client.ts", ...queue, "7"];
  assert.deepEqual(await run(spawn(Deno.execPath(), scoped)), {
    code: 0,
    stdout: " [x] Requesting fib(7)\n [.] Got 13\n",
    stderr: "",
  });
  await stop(server);
  assert.equal(
    server.stdout,
    AWAITING + [30, 10, 20, 30, 12, 7].map((n) => ` [.] fib(${n})\n`).join(""),
  );
});

Deno.test("Ctrl-C stops a client that waits for its answer: exit 0, nothing on stderr", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // and no server: the call waits
  await using client = deno("rpc_client.ts", ["--queue", broker.queue, "5"]);
  await waitFor("the request", async () => (await broker.ready(broker.queue)) === 1);
  client.child.kill("SIGINT");
  assert.equal((await client.status).code, 0);
  assert.equal(client.stdout, " [x] Requesting fib(5)\n");
  assert.equal(client.stderr, "");
});

Deno.test("Ctrl-C stops a server that is still connecting: exit 0 at once, nothing on stderr", async () => {
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 }); // accepts, never speaks
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const connection of silent) held.push(connection);
  })().catch(() => {});
  try {
    const env = { AMQP_URL: `amqp://127.0.0.1:${silent.addr.port}` };
    await using server = deno("rpc_server.ts", ["--queue", "unused"], env);
    await waitFor("the server to connect", () => held.length === 1, 30_000);
    const started = performance.now();
    server.child.kill("SIGINT");
    assert.equal((await server.status).code, 0, server.stderr);
    assert.ok(performance.now() - started < 5_000, "it exits at once, not at the 10 s timeout");
    assert.equal(server.stdout, "");
    assert.equal(server.stderr, "");
  } finally {
    silent.close();
    await accepting;
    for (const connection of held) connection.close();
  }
});

Deno.test("a lost connection mid-call: the client and the server say so in one line, exit 1", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // the client's; no server takes it
  await using proxy = startProxy();
  const env = { AMQP_URL: proxy.url };
  await using server = await serve(broker.newQueue(), env);
  await using client = deno("rpc_client.ts", ["--queue", broker.queue, "20"], env);
  await waitFor("the request", async () => (await broker.ready(broker.queue)) === 1);
  proxy.cut();
  assert.deepEqual(await run(client), {
    code: 1,
    stdout: " [x] Requesting fib(20)\n",
    stderr: "rpc_client: fib(20): lost the connection to the broker\n",
  });
  assert.deepEqual(await run(server), {
    code: 1,
    stdout: AWAITING,
    stderr: "rpc_server: lost the connection to the broker\n",
  });
});

Deno.test("a queue declared otherwise (classic) stops the server with one line that says 406", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, { durable: false }); // as older tutorials did
  const { code, stdout, stderr } = await run(deno("rpc_server.ts", ["--queue", broker.queue]));
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.match(stderr, /^rpc_server: [^\n]*406[^\n]*inequivalent arg[^\n]*\n$/);
});

/** A command line, its environment, the exit code and the one line the program must print. */
type Mistake = [string, string[], Record<string, string>, number, string | RegExp];

const hidden = (url: string) => url.replace("hunter2", "***");
const usage = (line: string) => `${line} (see --help)`;

/**
 * What both programs must answer in one line: `refused` has no listener,
 * `mute` never speaks AMQP, `wrongPassword` is the broker with a password it
 * refuses, and two unknown options (one with a password in it).
 */
function mistakesOfBoth(refused: string, mute: string, wrongPassword: string): Mistake[] {
  return ["rpc_client.ts", "rpc_server.ts"].flatMap((script): Mistake[] => {
    const n = script === "rpc_client.ts" ? ["30"] : []; // the server takes no arguments
    const cannot = (url: string, why: string): Mistake => [
      script,
      n,
      { AMQP_URL: url },
      1,
      `cannot connect to ${hidden(url)}: ${why}`,
    ];
    return [
      cannot(refused, "is RabbitMQ running?"),
      cannot(mute, "no answer in 10 s"),
      cannot(wrongPassword, "wrong password"),
      [
        script,
        n,
        { AMQP_URL: "u:hunter2@localhost" },
        1,
        /^cannot connect to u:\*\*\*@localhost: /,
      ],
      [script, ["--bogus", ...n], {}, 2, /^Unknown option '--bogus'.* \(see --help\)$/],
      [script, ["--queue", "", ...n], {}, 2, usage("--queue must not be empty")],
      [
        script,
        ["--queue:amqp://u:hunter2@x", ...n],
        {},
        2,
        /^Unknown option '--queue:amqp:\/\/u:\*\*\*@x/,
      ],
    ];
  });
}

/** Command lines only one program refuses: exit 2, one line. */
const MISTAKES_OF_ONE: Mistake[] = [
  [
    "rpc_server.ts",
    ["amqp://u:hunter2@x"],
    {},
    2,
    usage("Unexpected argument 'amqp://u:***@x'. This command does not take positional arguments"),
  ],
  ["rpc_client.ts", [], {}, 2, usage("give at least one n")],
  ["rpc_client.ts", ["abc"], {}, 2, usage('n must be from 0 to 10000, got "abc"')],
  ["rpc_client.ts", ["10001"], {}, 2, usage('n must be from 0 to 10000, got "10001"')],
  [
    "rpc_client.ts",
    ["amqp://u:hunter2@x"],
    {},
    2,
    usage('n must be from 0 to 10000, got "amqp://u:***@x"'),
  ],
  ["rpc_client.ts", ["--timeout", "soon", "1"], {}, 2, usage('--timeout must be ms, got "soon"')],
  ["rpc_client.ts", ["--timeout", "0", "1"], {}, 2, usage('--timeout must be ms, got "0"')],
];

Deno.test("each mistake, or a broker out of reach, gets one line and its exit code, never a password", async () => {
  const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  free.close(); // a port nobody listens on
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 }); // accepts, never speaks
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const connection of silent) held.push(connection);
  })().catch(() => {});
  const refused = `amqp://guest:hunter2@127.0.0.1:${free.addr.port}/`;
  const mute = `amqp://guest:hunter2@127.0.0.1:${silent.addr.port}/`;
  const wrongPassword = Object.assign(new URL(BROKER), { username: "guest", password: "hunter2" });
  const cases = [...mistakesOfBoth(refused, mute, wrongPassword.href), ...MISTAKES_OF_ONE];
  try {
    const timed = async ([script, args, env]: Mistake) => {
      const started = performance.now();
      const result = await run(deno(script, args, env));
      return { ...result, seconds: (performance.now() - started) / 1000 };
    };
    // Deno start-ups queue for the module cache: the silent listener's cases start first, and
    // the others once those two are connected, so that they do not delay them.
    cases.sort((a, b) => Number(b[2].AMQP_URL === mute) - Number(a[2].AMQP_URL === mute));
    const slow = cases.slice(0, 2).map(timed);
    await waitFor("both to connect to the silent listener", () => held.length === 2, 30_000);
    const results = await Promise.all([...slow, ...cases.slice(2).map(timed)]);
    for (const [i, { code, stdout, stderr, seconds }] of results.entries()) {
      const [script, args, env, expectedCode, line] = cases[i];
      const what = `${script} ${args.join(" ")} ${JSON.stringify(env)}: ${stderr}`;
      const name = script.replace(".ts", "");
      assert.equal(code, expectedCode, what);
      assert.equal(stdout, "", what);
      assert.doesNotMatch(stderr, /hunter2/, what);
      assert.match(stderr, /^[^\n]+\n$/, what); // one line
      if (typeof line === "string") assert.equal(stderr, `${name}: ${line}\n`, what);
      else assert.match(stderr.slice(name.length + 2, -1), line, what);
      if (env.AMQP_URL === mute) assert.ok(seconds > 9.5 && seconds < 25, `${what}: ${seconds} s`);
    }
    for (const script of ["rpc_client.ts", "rpc_server.ts"]) {
      const help = await run(deno(script, ["-h"]));
      assert.equal(help.code, 0);
      assert.match(help.stdout, new RegExp(`^Usage: ${script} \\[--queue NAME\\]`));
    }
  } finally {
    silent.close();
    await accepting;
    for (const connection of held) connection.close();
  }
});

// ─── Copying the lesson ──────────────────────────────────────────────────────

/**
 * Runs `source` as a learner's own file in an empty folder, on `broker.queue`, and checks that it
 * answers 10 and "abc" as the lesson's server does.
 */
async function runsAsTheServer(broker: Awaited<ReturnType<typeof openBroker>>, source: string) {
  const folder = await Deno.makeTempDir({ prefix: "rpc_test." });
  try {
    await Deno.writeTextFile(`${folder}/my_server.ts`, source);
    await using mine = deno("my_server.ts", [], { QUEUE: broker.queue }, folder);
    const ready = () => mine.stdout.includes(AWAITING) || mine.exited;
    await waitFor("the pasted server", ready, 30_000);
    assert.equal(mine.stderr, "");
    assert.deepEqual(await ask(broker, broker.queue, ["10", "abc"]), [
      [undefined, "55"],
      ["error", 'n must be from 0 to 10000, got "abc"'],
    ]);
    const refused = ' [!] Bad request: n must be from 0 to 10000, got "abc"\n';
    assert.equal(mine.stdout, `${AWAITING} [.] fib(10)\n${refused}`);
    mine.child.kill("SIGKILL");
    await mine.status;
    await allAcked(broker);
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
}

Deno.test("the server's consume callback, pasted alone into a file of one's own, runs", async () => {
  await using broker = await openBroker();
  const source = await Deno.readTextFile(`${HERE}/rpc_server.ts`);
  // What a learner copies: fib, and the consume call with its callback, as they stand.
  const fibStart = source.indexOf("export function fib(");
  const fibText = source.slice(fibStart, source.indexOf("\n}\n", fibStart) + 3);
  const consumeStart = source.indexOf("  await channel.consume(queue, (request) => {");
  const consumeText = source.slice(consumeStart, source.indexOf("\n  });\n", consumeStart) + 7);
  assert.ok(fibStart >= 0 && consumeStart >= 0, "found in rpc_server.ts");
  await runsAsTheServer(
    broker,
    [
      'import { Buffer } from "node:buffer";',
      'import amqp from "npm:amqplib@2.3.1";',
      fibText.replace("export ", ""),
      'const connection = await amqp.connect(Deno.env.get("AMQP_URL")!);',
      "const channel = await connection.createChannel();",
      'const queue = Deno.env.get("QUEUE")!;',
      'await channel.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } });',
      "await channel.prefetch(1);",
      `console.log(${JSON.stringify(AWAITING.slice(0, -1))});`,
      consumeText,
    ].join("\n"),
  );
});

Deno.test("rpc_server.ts down to its divider (the tutorial's part), pasted alone, runs", async () => {
  await using broker = await openBroker();
  const source = await Deno.readTextFile(`${HERE}/rpc_server.ts`);
  const divider = source.indexOf("// ─── What the tutorial leaves out");
  assert.ok(divider > 0, "the divider is in rpc_server.ts");
  const call = 'await startServer(Deno.env.get("AMQP_URL")!, Deno.env.get("QUEUE")!);';
  await runsAsTheServer(broker, `${source.slice(0, divider)}\n${call}\n`);
});

Deno.test("rpc_client.ts down to its divider (the tutorial's part), pasted alone, runs", async () => {
  await using broker = await openBroker();
  await using server = await serve(broker.queue);
  const source = await Deno.readTextFile(`${HERE}/rpc_client.ts`);
  const divider = source.indexOf("// ─── What the tutorial leaves out");
  assert.ok(divider > 0, "the divider is in rpc_client.ts");
  const calls = [
    'const client = await startClient(Deno.env.get("AMQP_URL")!, Deno.env.get("QUEUE")!);',
    "console.log(await client.call(30), await client.call(90));",
    "await client.close();",
  ];
  const folder = await Deno.makeTempDir({ prefix: "rpc_test." });
  try {
    await Deno.writeTextFile(`${folder}/my_client.ts`, source.slice(0, divider) + calls.join("\n"));
    const mine = await run(deno("my_client.ts", [], { QUEUE: broker.queue }, folder));
    assert.deepEqual(mine, { code: 0, stdout: "832040n 2880067194370816120n\n", stderr: "" });
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
  await stop(server);
});

Deno.test("rpc_server.ts and rpc_client.ts, copied alone into an empty folder, run and answer", async () => {
  await using broker = await openBroker();
  const folder = await Deno.makeTempDir({ prefix: "rpc_test." });
  try {
    for (const file of ["rpc_server.ts", "rpc_client.ts"]) {
      await Deno.copyFile(`${HERE}/${file}`, `${folder}/${file}`);
    }
    await using server = await serve(broker.queue, {}, folder);
    const client = await run(deno("rpc_client.ts", ["--queue", broker.queue, "30"], {}, folder));
    assert.deepEqual(client, {
      code: 0,
      stdout: " [x] Requesting fib(30)\n [.] Got 832040\n",
      stderr: "",
    });
    await stop(server);
    assert.equal(server.stdout, `${AWAITING} [.] fib(30)\n`);
    // Nothing but the two files: no deno.json, no lock written beside them.
    assert.deepEqual([...Deno.readDirSync(folder)].map((entry) => entry.name).sort(), [
      "rpc_client.ts",
      "rpc_server.ts",
    ]);
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
});

// ─── Interop with the other tutorials, through our Python stand-ins ─────────

Deno.test({
  name: "interop: interop/peer_server.py (as the other tutorials' servers) answers our client" +
    (pikaMissing ? " (skipped: needs /usr/bin/python3 with pika)" : ""),
  ignore: pikaMissing,
  async fn() {
    await using broker = await openBroker();
    await using peer = spawn(PYTHON, ["interop/peer_server.py"], { RPC_QUEUE: broker.queue });
    await waitFor("their server", () => peer.stdout.includes("ready on") || peer.exited);
    assert.equal(peer.stdout, ` [x] peer server ready on ${broker.queue} (quorum)\n`, peer.stderr);
    const client = await startClient(BROKER, broker.queue);
    try {
      assert.deepEqual(
        await Promise.all([0, 1, 10, 90].map((n) => client.call(n))),
        [0n, 1n, 55n, 2880067194370816120n],
      );
    } finally {
      await client.close();
    }
    assert.deepEqual(await run(deno("rpc_client.ts", ["--queue", broker.queue, "30", "25"])), {
      code: 0,
      stdout: requesting(30, 25) + " [.] Got 832040\n [.] Got 75025\n",
      stderr: "",
    });
    peer.child.kill("SIGTERM");
    assert.equal((await peer.status).code, 0, peer.stderr);
  },
});

Deno.test({
  name:
    "interop: interop/peer_client.py (as the other tutorials' clients) gets answers from our server" +
    (pikaMissing ? " (skipped: needs /usr/bin/python3 with pika)" : ""),
  ignore: pikaMissing,
  async fn() {
    await using broker = await openBroker();
    await using server = await serve(broker.queue);
    // Their callback queues: one the broker names (amq.gen-...), and direct reply-to.
    for (const reply of ["exclusive", "direct"]) {
      const args = ["interop/peer_client.py", "30", "--reply", reply];
      const output = await run(spawn(PYTHON, args, { RPC_QUEUE: broker.queue }));
      assert.deepEqual(output, { code: 0, stdout: " [.] Got 832040\n", stderr: "" }, reply);
    }
    await stop(server);
    assert.equal(server.stdout, `${AWAITING} [.] fib(30)\n [.] fib(30)\n`);
  },
});

// ─── The demo ────────────────────────────────────────────────────────────────

Deno.test("rpc_demo.ts runs with only --allow-net and --allow-env and shows each reply matched to its call", async () => {
  await using broker = await openBroker();
  const { code, stdout, stderr } = await run(deno("rpc_demo.ts", []));
  assert.equal(code, 0, stderr);
  assert.match(stdout, /client callback queue: amq\.gen-\S+\n/);
  // The client's --verbose lines, on stderr: each request, and the reply that matches it.
  const sent = /^ \[>\] fib\(1000\), correlation_id (\w{8}), reply_to amq\.gen-/m.exec(stderr);
  assert.ok(sent, stderr);
  assert.ok(stderr.includes(` [<] reply ${sent[1]}: matches fib(1000)\n`), stderr);
  assert.equal(stderr.split("no call waits for it, dropped").length, 2, stderr); // the stray
  assert.match(stdout, /\n {2}fib\(30\) = 832040\n/);
  assert.match(stdout, /\n {2}fib\(90\) = 2880067194370816120\n/);
  assert.match(
    stdout,
    /error reply: fib\(20000\): n must be from 0 to 10000, got "20000"\n/,
  );
  assert.match(stdout, /\n {2}fib\(10\) = 55\n/);
  // Its queue is gone.
  const queue = /consumes "(rpc_demo\.[0-9a-f-]{36})"/.exec(stdout)?.[1];
  assert.ok(queue, stdout);
  assert.equal(await broker.exists(queue), false);
});
