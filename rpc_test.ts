/**
 * rpc_test.ts: the lesson's tests, for rpc_server.ts, rpc_client.ts and rpc_demo.ts, against a
 * real RabbitMQ (`$AMQP_URL`, else amqp://localhost).
 *
 * Each test uses a queue of its own (`rpc_test.<uuid>`) and deletes it, so it never meets another
 * test or a server someone runs on `rpc_queue`; each ends, by its PID, every process it started.
 * The interop tests need Debian's python3 with pika (python3-pika) and are skipped without it.
 *
 *     deno test -A rpc_test.ts
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import amqp, { type ChannelModel, type Message } from "npm:amqplib@2.3.1";
import { fib, MAX_N, startServer } from "./rpc_server.ts";
import { FibonacciRpcClient } from "./rpc_client.ts";

/** The broker every test uses. */
const BROKER = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
/** This folder: the scripts and interop/ are here. */
const HERE = import.meta.dirname!;
/** How the lesson's server declares its queue; a test that declares it first does the same. */
const QUORUM = { durable: true, arguments: { "x-queue-type": "quorum" } };
/** Debian's python3, where python3-pika installs; it runs our stand-ins in interop/. */
const PYTHON = "/usr/bin/python3";
const pikaMissing = !(await new Deno.Command(PYTHON, {
  args: ["-c", "import pika"],
  stdout: "null",
  stderr: "null",
}).output().then((output) => output.success, () => false));

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

/** The lesson's server (its log kept) and client on `queue`, in this process. */
async function startPair(queue: string, trace?: (line: string) => void) {
  const logged: string[] = [];
  const server = await startServer(BROKER, queue, (line) => logged.push(line));
  const client = await FibonacciRpcClient.connect(BROKER, { queue, trace });
  return {
    server,
    client,
    logged,
    async [Symbol.asyncDispose]() {
      await client.close();
      await server.close().catch(() => {}); // closed already, if the test did
    },
  };
}

/** A program in the background, its output collected; disposing it kills it by its PID. */
function spawn(command: string, args: string[], env: Record<string, string> = {}) {
  const child = new Deno.Command(command, {
    args,
    cwd: HERE,
    env: { AMQP_URL: BROKER, NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = { stdout: "", stderr: "" };
  const collect = (key: keyof typeof output) => {
    const decoder = new TextDecoder();
    return new WritableStream<Uint8Array>({
      write: (chunk) => void (output[key] += decoder.decode(chunk, { stream: true })),
    });
  };
  const reading = Promise.all([
    child.stdout.pipeTo(collect("stdout")),
    child.stderr.pipeTo(collect("stderr")),
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
    get exited() {
      return exited;
    },
    get stdout() {
      return output.stdout;
    },
    get stderr() {
      return output.stderr;
    },
    async [Symbol.asyncDispose]() {
      if (!exited) child.kill("SIGKILL");
      await status;
    },
  };
}

/** One of the lesson's scripts, as the README runs it: only --allow-net and --allow-env. */
function deno(script: string, args: string[], env: Record<string, string> = {}) {
  return spawn(Deno.execPath(), ["run", "--allow-net", "--allow-env", script, ...args], env);
}

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

// ─── The tutorial ────────────────────────────────────────────────────────────

Deno.test("fib(n) is exact for small and large n", () => {
  assert.deepEqual([0, 1, 2, 10, 30].map(fib), [0n, 1n, 1n, 55n, 832040n]);
  assert.equal(fib(90), 2880067194370816120n);
  assert.equal(fib(1000), expected(1000));
  assert.equal(fib(MAX_N), expected(10_000));
  assert.equal(MAX_N, 10_000);
});

Deno.test("the client gets exact answers from the server, one call or many at once", async () => {
  await using broker = await openBroker();
  await using pair = await startPair(broker.queue);
  assert.equal(await pair.client.call(30), 832040n);
  const numbers = [0, 1, 2, 10, 30, 90, 1000];
  assert.deepEqual(
    await Promise.all(numbers.map((n) => pair.client.call(n))),
    [0n, 1n, 1n, 55n, 832040n, 2880067194370816120n, expected(1000)],
  );
  assert.deepEqual(pair.logged, [
    " [x] Awaiting RPC requests",
    " [.] fib(30)",
    ...numbers.map((n) => ` [.] fib(${n})`),
  ]);
  // The tutorial's callback queue: named by the broker. And rpc_queue is durable and quorum:
  // declaring it so again is accepted.
  assert.match(pair.client.callbackQueue, /^amq\.gen-/);
  await broker.channel.assertQueue(broker.queue, QUORUM);
});

Deno.test("a duplicate reply and a reply with an unknown correlation_id are dropped", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // as the server will declare it
  const trace: string[] = [];
  const client = await FibonacciRpcClient.connect(BROKER, {
    queue: broker.queue,
    trace: (line) => trace.push(line),
  });
  let server: ChannelModel | undefined;
  try {
    const answer = client.call(20); // no server yet: the request waits in the queue
    // A look at the request as it waits: reply_to and a fresh correlation_id. Then it goes back.
    const request = await waitFor("the request", () => broker.channel.get(broker.queue));
    const { replyTo, correlationId } = request.properties;
    assert.equal(replyTo, client.callbackQueue);
    assert.match(correlationId, /^[0-9a-f]{8}-[0-9a-f-]{27}$/);
    assert.equal(request.content.toString(), "20");
    broker.channel.nack(request, false, true);
    // A reply that no call waits for, before the real answer.
    const stray = { correlationId: "unknown-correlation-id" };
    broker.channel.sendToQueue(client.callbackQueue, Buffer.from("999"), stray);
    const droppedStray = " [<] reply unknown-: no call waits for it, dropped";
    await waitFor("the stray reply to be dropped", () => trace.includes(droppedStray));
    server = await startServer(BROKER, broker.queue, () => {});
    assert.equal(await answer, 6765n); // the one right answer
    // The same answer again, as a server that died before its ack would send it.
    broker.channel.sendToQueue(client.callbackQueue, Buffer.from("999"), { correlationId });
    const id = correlationId.slice(0, 8);
    const droppedDuplicate = ` [<] reply ${id}: no call waits for it, dropped`;
    await waitFor("the duplicate to be dropped", () => trace.includes(droppedDuplicate));
    assert.equal(await client.call(21), 10946n);
    assert.deepEqual(trace.filter((line) => line.startsWith(" [<]")).slice(0, 3), [
      droppedStray,
      ` [<] reply ${id}: matches fib(20)`,
      droppedDuplicate,
    ]);
  } finally {
    await client.close();
    await server?.close();
  }
});

// ─── What the tutorial leaves open ───────────────────────────────────────────

Deno.test("a bad request gets an error reply and is acked, and the server goes on", async () => {
  await using broker = await openBroker();
  await using pair = await startPair(broker.queue);
  const { queue: replyTo } = await broker.channel.assertQueue("", { exclusive: true });
  const replies: Message[] = [];
  await broker.channel.consume(replyTo, (reply) => reply && replies.push(reply), { noAck: true });
  const refusal = (got: string) => `n must be a decimal integer from 0 to 10000, got ${got}`;
  const cases: Array<[Buffer, string]> = [
    [Buffer.from("abc"), refusal('"abc"')],
    [Buffer.from("-5"), refusal('"-5"')],
    [Buffer.from("1.5"), refusal('"1.5"')],
    [Buffer.from(""), refusal('""')],
    [Buffer.from("10001"), refusal('"10001"')],
    [Buffer.from("9".repeat(30)), refusal(`"${"9".repeat(30)}"`)],
    [Buffer.alloc(1_000_000, "7"), refusal("1000000 bytes")],
    [Buffer.from([0xff, 0xfe, 0x31]), refusal('"\uFFFD\uFFFD1"')],
    [Buffer.from(" 12\n"), ""], // white space around the digits is fine
  ];
  for (const [i, [body]] of cases.entries()) {
    broker.channel.sendToQueue(broker.queue, body, { replyTo, correlationId: `c${i}` });
  }
  // A request without reply_to: nobody to answer, but acked all the same.
  broker.channel.sendToQueue(broker.queue, Buffer.from("5"), { correlationId: "no-reply-to" });
  await waitFor("every reply", () => replies.length === cases.length);
  for (const [i, [body, message]] of cases.entries()) {
    const reply = replies.find((reply) => reply.properties.correlationId === `c${i}`);
    assert.ok(reply, `a reply to request ${i}`);
    const what = JSON.stringify(body.subarray(0, 20).toString());
    assert.equal(reply.properties.type, message ? "error" : undefined, what);
    assert.equal(reply.content.toString(), message || "144", what);
  }
  assert.equal(await pair.client.call(10), 55n); // the server goes on
  assert.equal(pair.logged.filter((line) => line.startsWith(" [!] Bad request: ")).length, 8);
  await pair.server.close(); // requests not acked would go back to the queue now
  assert.equal(await broker.ready(broker.queue), 0);
});

Deno.test({
  name:
    "requests whose reply_to and correlation_id are not UTF-8 are acked, and the server goes on",
  ignore: pikaMissing,
  async fn() {
    await using broker = await openBroker();
    await using pair = await startPair(broker.queue);
    // Python can put raw bytes where amqplib only sends UTF-8: interop/hostile_publish.py.
    const args = ["interop/hostile_publish.py", "--queue", broker.queue, "--count", "4"];
    const published = await run(spawn(PYTHON, args));
    assert.equal(published.code, 0, published.stderr);
    assert.equal(await pair.client.call(10), 55n); // after the four, in the queue's order
    // The 100-byte ones cannot be echoed (a short string holds 255 bytes, and each bad byte
    // reads as 3); the 4-byte ones go to a queue that does not exist. All are acked.
    const cannot = pair.logged.filter((line) => line.startsWith(" [!] Cannot reply: "));
    assert.equal(cannot.length, 2, pair.logged.join("\n"));
    await pair.server.close();
    assert.equal(await broker.ready(broker.queue), 0);
  },
});

Deno.test("the client declares no request queue, and a call nobody answers times out", async () => {
  await using broker = await openBroker();
  const client = await FibonacciRpcClient.connect(BROKER, { queue: broker.queue, timeout: 300 });
  try {
    const started = Date.now();
    await assert.rejects(client.call(7), {
      message: "fib(7): no reply within 300 ms (is the server running?)",
    });
    assert.ok(Date.now() - started >= 290);
    assert.equal(await broker.exists(broker.queue), false);
  } finally {
    await client.close();
  }
});

Deno.test("a lost connection fails every pending call at once", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // and no server: the calls wait
  await using proxy = startProxy();
  const client = await FibonacciRpcClient.connect(proxy.url, { queue: broker.queue });
  try {
    const calls = [1, 2, 3].map((n) => client.call(n));
    await waitFor("the three requests", async () => (await broker.ready(broker.queue)) === 3);
    const started = Date.now();
    proxy.cut();
    const outcomes = await Promise.allSettled(calls);
    assert.deepEqual(
      outcomes.map((outcome) => outcome.status === "rejected" && outcome.reason.message),
      [1, 2, 3].map((n) => `fib(${n}): lost the connection to the broker`),
    );
    assert.ok(Date.now() - started < 2_000, "at once, not at the timeout");
  } finally {
    await client.close();
  }
});

// ─── The command lines ───────────────────────────────────────────────────────

Deno.test("the command-line server and client work end to end, and Ctrl-C stops the server", async () => {
  await using broker = await openBroker();
  const queue = ["--queue", broker.queue];
  await using server = deno("rpc_server.ts", queue);
  await waitFor("the server", () => server.stdout.includes(" [x] Awaiting RPC requests\n"));
  assert.deepEqual(await run(deno("rpc_client.ts", [...queue, "30"])), {
    code: 0,
    stdout: " [x] Requesting fib(30)\n [.] Got 832040\n",
    stderr: "",
  });
  assert.deepEqual(await run(deno("rpc_client.ts", [...queue, "10", "20", "30"])), {
    code: 0,
    stdout: " [x] Requesting fib(10)\n [x] Requesting fib(20)\n [x] Requesting fib(30)\n" +
      " [.] Got 55\n [.] Got 6765\n [.] Got 832040\n",
    stderr: "",
  });
  // --verbose shows, on stderr, each request and how its reply finds it.
  const verbose = await run(deno("rpc_client.ts", [...queue, "--verbose", "12"]));
  assert.equal(verbose.stdout, " [x] Requesting fib(12)\n [.] Got 144\n");
  assert.match(
    verbose.stderr,
    /^ \[>\] fib\(12\), correlation_id (\w{8}), reply_to amq\.gen-\S+\n \[<\] reply \1: matches fib\(12\)\n$/,
  );
  server.child.kill("SIGINT");
  assert.equal((await server.status).code, 0);
  assert.equal(
    server.stdout,
    " [x] Awaiting RPC requests\n [.] fib(30)\n [.] fib(10)\n [.] fib(20)\n [.] fib(30)\n" +
      " [.] fib(12)\n",
  );
  assert.equal(server.stderr, "");
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

Deno.test("a lost connection mid-call: the client and the server say so in one line, exit 1", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, QUORUM); // the client's; no server takes it
  await using proxy = startProxy();
  const env = { AMQP_URL: proxy.url };
  await using server = deno("rpc_server.ts", ["--queue", broker.newQueue()], env);
  await waitFor("the server", () => server.stdout.includes("Awaiting RPC requests"));
  await using client = deno("rpc_client.ts", ["--queue", broker.queue, "20"], env);
  await waitFor("the request", async () => (await broker.ready(broker.queue)) === 1);
  proxy.cut();
  assert.deepEqual(await run(client), {
    code: 1,
    stdout: " [x] Requesting fib(20)\n",
    stderr: "rpc_client: fib(20): lost the connection to the broker\n",
  });
  const { code, stderr } = await run(server);
  assert.equal(code, 1);
  assert.match(stderr, /^rpc_server: the connection to the broker closed(: [^\n]+)?\n$/);
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
    const cannot = (
      url: string,
      why: string,
    ): Mistake => [script, n, { AMQP_URL: url }, 1, `cannot connect to ${hidden(url)}: ${why}`];
    return [
      cannot(refused, "connection refused (is RabbitMQ running?)"),
      cannot(mute, "no AMQP answer within 10 s (a RabbitMQ port?)"),
      cannot(wrongPassword, "access refused (wrong user name or password?)"),
      [
        script,
        n,
        { AMQP_URL: "u:hunter2@localhost" },
        1,
        /^cannot connect to u:\*\*\*@localhost: /,
      ],
      [script, ["--bogus", ...n], {}, 2, usage("Unknown option '--bogus'")],
      [script, ["--queue", "", ...n], {}, 2, usage("--queue must not be empty")],
      [
        script,
        ["--queue:amqp://u:hunter2@x", ...n],
        {},
        2,
        usage("Unknown option '--queue:***@x'"),
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
    usage("Unexpected argument 'amqp:***@x'. This command does not take positional arguments"),
  ],
  ["rpc_client.ts", [], {}, 2, usage("give at least one n, e.g. rpc_client.ts 30")],
  ["rpc_client.ts", ["abc"], {}, 2, usage('n must be a number from 0 to 10000, got "abc"')],
  ["rpc_client.ts", ["10001"], {}, 2, usage('n must be a number from 0 to 10000, got "10001"')],
  [
    "rpc_client.ts",
    ["amqp://u:hunter2@x"],
    {},
    2,
    usage('n must be a number from 0 to 10000, got "amqp:***@x"'),
  ],
  ["rpc_client.ts", ["--timeout", "soon", "1"], {}, 2, usage('--timeout must be ms, got "soon"')],
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
    await waitFor("both to connect to the silent listener", () => held.length === 2);
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
      else assert.match(stderr.slice(name.length + 2), line, what);
      if (env.AMQP_URL === mute) assert.ok(seconds > 9.5 && seconds < 13, `${what}: ${seconds} s`);
    }
    for (const script of ["rpc_client.ts", "rpc_server.ts"]) {
      const help = await run(deno(script, ["-h"]));
      assert.equal(help.code, 0);
      assert.match(help.stdout, new RegExp(`^Usage: deno run --allow-net --allow-env ${script}`));
    }
  } finally {
    silent.close();
    await accepting;
    for (const connection of held) connection.close();
  }
});

// ─── Interop with the other tutorials, through our Python stand-ins ─────────

Deno.test({
  name: "interop: interop/peer_server.py (as the other tutorials' servers) answers our client",
  ignore: pikaMissing,
  async fn() {
    await using broker = await openBroker();
    await using peer = spawn(PYTHON, ["interop/peer_server.py"], { RPC_QUEUE: broker.queue });
    await waitFor("their server", () => peer.stdout.includes("ready on") || peer.exited);
    assert.equal(peer.stdout, ` [x] peer server ready on ${broker.queue} (quorum)\n`, peer.stderr);
    const client = await FibonacciRpcClient.connect(BROKER, { queue: broker.queue });
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
      stdout: " [x] Requesting fib(30)\n [x] Requesting fib(25)\n [.] Got 832040\n [.] Got 75025\n",
      stderr: "",
    });
    peer.child.kill("SIGTERM");
    assert.equal((await peer.status).code, 0, peer.stderr);
  },
});

Deno.test({
  name:
    "interop: interop/peer_client.py (as the other tutorials' clients) gets answers from our server",
  ignore: pikaMissing,
  async fn() {
    await using broker = await openBroker();
    await using pair = await startPair(broker.queue);
    for (const reply of ["exclusive", "direct"]) {
      const args = ["interop/peer_client.py", "30", "--reply", reply];
      const output = await run(spawn(PYTHON, args, { RPC_QUEUE: broker.queue }));
      assert.deepEqual(output, { code: 0, stdout: " [.] Got 832040\n", stderr: "" }, reply);
    }
    assert.deepEqual(pair.logged, [" [x] Awaiting RPC requests", " [.] fib(30)", " [.] fib(30)"]);
  },
});

// ─── The demo ────────────────────────────────────────────────────────────────

Deno.test("rpc_demo.ts runs with only --allow-net and --allow-env and shows each reply matched to its call", async () => {
  await using broker = await openBroker();
  const { code, stdout, stderr } = await run(deno("rpc_demo.ts", []));
  assert.equal(stderr, "");
  assert.equal(code, 0);
  assert.match(stdout, /client callback queue: amq\.gen-\S+\n/);
  const sent = /client {2}\[>\] fib\(1000\), correlation_id (\w{8}), reply_to amq\.gen-/.exec(
    stdout,
  );
  assert.ok(sent, stdout);
  assert.ok(stdout.includes(`client  [<] reply ${sent[1]}: matches fib(1000)\n`), stdout);
  assert.match(stdout, /\n {2}fib\(30\) = 832040\n/);
  assert.match(stdout, /\n {2}fib\(90\) = 2880067194370816120\n/);
  assert.match(stdout, /no call waits for it, dropped\n {2}replies dropped so far: 1\n/);
  assert.match(stdout, /error reply: n must be a decimal integer from 0 to 10000, got "20000"\n/);
  assert.match(stdout, /\n {2}fib\(10\) = 55\n/);
  // Its queue is gone.
  const queue = /consumes "(rpc_demo\.[0-9a-f-]{36})"/.exec(stdout)?.[1];
  assert.ok(queue, stdout);
  assert.equal(await broker.exists(queue), false);
});
