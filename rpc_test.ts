/**
 * Tests for rpc_server.ts and rpc_client.ts against a real RabbitMQ broker
 * (`$AMQP_URL`, else amqp://localhost). Every test uses queues of its own
 * and deletes them, so it never meets another test or a running server.
 *
 * The tests follow the scripts' parts: the tutorial, what it leaves open,
 * interop with the other tutorials, the command line, broker URLs and
 * messages. The tests that close connections from the broker side need
 * `rabbitmqctl` to reach the broker; without it they are skipped.
 *
 * Run: `deno test -A` (network, environment, files, subprocesses).
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel, ChannelModel, Message } from "npm:amqplib@^2.3.1";
import { fib, MAX_N, MAX_REQUEST_BYTES, RpcServer, type ServerOptions } from "./rpc_server.ts";
import { type ClientOptions, FibonacciRpcClient, RpcError } from "./rpc_client.ts";

/** The broker every test uses: `$AMQP_URL`, else amqp://localhost. */
const URL = Deno.env.get("AMQP_URL") ?? "amqp://localhost";

/** Server options that silence its log. */
const quiet = { log: null };

/** Resolves after `ms`: for polling, and for tests about time passing (each says why). */
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

/** A URL as the scripts print it: its password replaced by `***`. */
function shown(url: string) {
  const copy = new globalThis.URL(url);
  if (copy.password) copy.password = "***";
  return copy.href;
}

/** The tests' broker URL with `password` (and user guest, unless it names one) in it. */
function withPassword(password: string) {
  const url = new globalThis.URL(URL);
  url.username ||= "guest";
  url.password = password;
  return url.href;
}

/** The tests' broker URL with its password written out: its own, else guest's. */
const URL_WITH_PASSWORD = new globalThis.URL(URL).password ? URL : withPassword("guest");

/** A broker connection of the test's own, naming fresh queues; disposing it deletes them all. */
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
  /** Runs `work` on a channel of its own, for checks whose failure closes the channel. */
  async function withChannel<T>(work: (channel: Channel) => Promise<T>): Promise<T> {
    const own = await connection.createChannel();
    own.on("error", () => {});
    try {
      return await work(own);
    } finally {
      await own.close().catch(() => {});
    }
  }
  return {
    connection,
    channel,
    queue: newQueue(),
    newQueue,
    withChannel,
    /** Messages ready in a queue (not counting unacked ones). */
    async messageCount(queue: string) {
      return (await withChannel((own) => own.checkQueue(queue))).messageCount;
    },
    /** An exclusive reply queue and the replies it has received. */
    async replyQueue() {
      const { queue } = await channel.assertQueue("", { exclusive: true });
      const replies: Message[] = [];
      await channel.consume(queue, (message) => message && replies.push(message), { noAck: true });
      return { queue, replies };
    },
    async [Symbol.asyncDispose]() {
      try {
        await withChannel(async (own) => {
          for (const queue of queues) await own.deleteQueue(queue);
        });
      } finally {
        await connection.close();
      }
    },
  };
}

/** A queue of the test's own with a server (quiet unless `log` is given) and a client on it. */
async function startPair(
  serverOptions: Omit<ServerOptions, "queue"> = {},
  clientOptions: Omit<ClientOptions, "queue"> = {},
) {
  const broker = await openBroker();
  try {
    const server = await RpcServer.start({
      url: URL,
      queue: broker.queue,
      ...quiet,
      ...serverOptions,
    });
    const client = await FibonacciRpcClient.connect({
      url: URL,
      queue: broker.queue,
      ...clientOptions,
    }).catch(async (error) => {
      await server.close();
      throw error;
    });
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

/** A handler that holds each request until `release()` or disposal, so calls are in progress. */
function heldHandler() {
  const seen: number[] = [];
  const { promise, resolve } = Promise.withResolvers<void>();
  return {
    seen,
    handler: async (n: number) => {
      seen.push(n);
      await promise;
      return fib(n);
    },
    release: () => resolve(),
    [Symbol.dispose]: () => resolve(),
  };
}

/** A handler that takes `ms` per request (for tests about slow work), noting each n in `seen`. */
function slowHandler(ms: number, seen: number[] = []) {
  return async (n: number) => {
    seen.push(n);
    await delay(ms);
    return fib(n);
  };
}

/** Runs one of the scripts as a user would (`deno run -A`), with a deadline. */
async function run(script: string, args: string[], timeout = 20_000, env?: Record<string, string>) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: import.meta.dirname,
    env,
    stdin: "null",
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
  return spawnDeno(["run", "-A", script, ...args]);
}

/** Runs `deno` with these arguments in the background, collecting its output, as spawn() does. */
function spawnDeno(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: import.meta.dirname,
    stdin: "null",
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

/** Runs `rabbitmqctl args` (2 to 4 s a call here) and returns its output; throws, saying why, if it fails. */
async function rabbitmqctl(args: string[], timeout = 20_000) {
  const what = `rabbitmqctl ${args[0]}`;
  let child;
  try {
    child = new Deno.Command("rabbitmqctl", {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    const why = error instanceof Deno.errors.NotFound ? "not installed" : (error as Error).message;
    throw new Error(`${what}: ${why}`);
  }
  // Run as root, rabbitmqctl runs the real one under su: killing it leaves
  // that one holding the pipes, so the deadline must not wait for them.
  const output = child.output();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeout);
  });
  const result = await Promise.race([output, late]).finally(() => clearTimeout(timer));
  if (!result) {
    child.kill("SIGKILL");
    output.catch(() => {});
    throw new Error(`${what}: no answer within ${timeout / 1000} s`);
  }
  const decoder = new TextDecoder();
  if (!result.success) {
    throw new Error(`${what}: exit ${result.code}: ${decoder.decode(result.stderr).trim()}`);
  }
  return decoder.decode(result.stdout);
}

/** The broker's pid for the connection named `connectionName`, if rabbitmqctl lists it. */
async function connectionPid(connectionName: string, timeout?: number) {
  const list = await rabbitmqctl(
    ["list_connections", "--quiet", "--no-table-headers", "pid", "client_properties"],
    timeout,
  );
  return list.split("\n")
    .find((line) => line.includes(`{"connection_name","${connectionName}"}`))
    ?.split("\t")[0];
}

/** Closes the named connection from the broker's side, as a broker restart would. */
async function closeFromBroker(connectionName: string) {
  const pid = await connectionPid(connectionName);
  assert.ok(pid, `no broker connection named "${connectionName}"`);
  await rabbitmqctl(["close_connection", pid, "closed by rpc_test"]);
}

/** Why rabbitmqctl cannot close our connections (a broker in Docker, say), or undefined. */
async function rabbitmqctlProblem(): Promise<string | undefined> {
  // It works if it lists a connection of ours: then it reaches the broker we use.
  const connectionName = `rpc_test probe ${crypto.randomUUID().slice(0, 8)}`;
  const clientProperties = { connection_name: connectionName };
  const connection = await amqp.connect(URL, { clientProperties }).catch(() => undefined);
  if (!connection) return `no broker at ${shown(URL)}`;
  try {
    const pid = await connectionPid(connectionName, 15_000);
    return pid ? undefined : "it does not list our connection";
  } catch (error) {
    return (error as Error).message;
  } finally {
    await connection.close();
  }
}

/** Whether rabbitmqctl reaches the tests' broker: probed once, at load. */
const rabbitmqctlWorks = await rabbitmqctlProblem().then((problem) => {
  if (problem === undefined) return true;
  console.log(
    `rabbitmqctl cannot reach the broker (${problem}): ` +
      "skipping the tests that close connections from the broker side",
  );
  return false;
});

/** Options for the tests that close connections from the broker side (with rabbitmqctl). */
const fromBrokerSide = { ignore: !rabbitmqctlWorks };

/** Debian's python3 with python3-pika runs our Python peers (interop/). */
const PYTHON = "/usr/bin/python3"; // Debian's, where python3-pika installs
const pikaInstalled = await new Deno.Command(PYTHON, {
  args: ["-c", "import pika"],
  stdout: "null",
  stderr: "null",
}).output().then((output) => output.success, () => false);

/**
 * A TCP proxy of the test's own between a program and the broker. `cut()`
 * closes every link at once, with no AMQP close: to the program, the broker
 * has vanished, as when a host dies or a NAT forgets the connection.
 * `restore()` listens again on the same port.
 */
function startProxy() {
  const sockets = new Set<Deno.Conn>();
  let listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  let accepting = accept(listener);
  async function accept(server: Deno.Listener) {
    for await (const downstream of server) {
      const upstream = await Deno.connect({ hostname: "127.0.0.1", port: 5672 }).catch(() => null);
      if (!upstream) {
        downstream.close();
        continue;
      }
      sockets.add(downstream).add(upstream);
      downstream.readable.pipeTo(upstream.writable).catch(() => {});
      upstream.readable.pipeTo(downstream.writable).catch(() => {});
    }
  }
  function cut() {
    try {
      listener.close();
    } catch {
      // cut already
    }
    for (const socket of sockets) {
      try {
        socket.close();
      } catch {
        // already closed by its peer
      }
    }
    sockets.clear();
  }
  return {
    url: `amqp://guest:guest@127.0.0.1:${port}`,
    cut,
    async restore() {
      await accepting;
      listener = Deno.listen({ hostname: "127.0.0.1", port });
      accepting = accept(listener);
    },
    async [Symbol.asyncDispose]() {
      cut();
      await accepting;
    },
  };
}

/**
 * A TCP proxy to the broker in a process of its own, printing the size of
 * each read from the client's side: how many writes the client's bytes came
 * in. (In the test's own process its reads would wait for the client's
 * writes to finish, and merge them.)
 */
async function startCountingProxy() {
  const code = `
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    console.log(listener.addr.port);
    for await (const client of listener) {
      const broker = await Deno.connect({ hostname: "127.0.0.1", port: 5672 });
      broker.readable.pipeTo(client.writable).catch(() => {});
      const writer = broker.writable.getWriter();
      const buffer = new Uint8Array(1 << 20);
      (async () => {
        for (let n; (n = await client.read(buffer).catch(() => null)) !== null;) {
          console.log(n);
          await writer.write(buffer.slice(0, n));
        }
        writer.close().catch(() => {});
      })();
    }`;
  const proxy = spawnDeno(["eval", code]);
  const lines = () => proxy.stdout.split("\n").slice(0, -1); // whole lines only
  await waitFor("the counting proxy to listen", () => lines().length > 0);
  return {
    url: `amqp://guest:guest@127.0.0.1:${lines()[0]}`,
    /** The sizes of the reads so far, from the client's side. */
    get reads() {
      return lines().slice(1).map(Number);
    },
    [Symbol.asyncDispose]: () => proxy[Symbol.asyncDispose](),
  };
}

/** Runs .ci/cluster.sh; returns its last line of output. */
async function cluster(...args: string[]): Promise<string> {
  const output = await new Deno.Command("bash", {
    args: [".ci/cluster.sh", ...args],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(240_000),
  }).output();
  const stdout = new TextDecoder().decode(output.stdout).trim();
  const stderr = new TextDecoder().decode(output.stderr).trim();
  if (!output.success) {
    throw new Error(`cluster.sh ${args.join(" ")}: ${stderr.split("\n").at(-1)}`);
  }
  return stdout.split("\n").at(-1) ?? "";
}

const clusterProblem = await cluster("available").then(() => "", (error: Error) => error.message);
if (clusterProblem) console.log(`skipping the cluster tests: ${clusterProblem}`);

/** Deletes a queue through the first node that answers. */
async function deleteQueue(urls: string[], queue: string): Promise<void> {
  for (const url of urls) {
    const connection = await amqp.connect(url).catch(() => undefined);
    if (!connection) continue;
    const channel = await connection.createChannel();
    await channel.deleteQueue(queue);
    await connection.close();
    return;
  }
  throw new Error(`no node answered to delete ${queue}`);
}

interface LoadResult {
  right: number;
  wrong: number;
  failures: Map<string, number>;
  /** ms from the client's noticing the loss to the first call that succeeded after it. */
  failover?: number;
}

/**
 * Calls fib(n) from `concurrency` workers, each calling again as soon as its
 * last call settled (50 ms later after a failure, as a careful caller
 * would). After 1,000 calls it runs `fault`; it stops 2,000 calls after the
 * client has noticed the fault (`noticed`), or after 90 s.
 */
async function load(
  client: FibonacciRpcClient,
  concurrency: number,
  fault: () => Promise<unknown>,
  noticed: () => boolean,
): Promise<LoadResult> {
  const result: LoadResult = { right: 0, wrong: 0, failures: new Map() };
  const until = performance.now() + 90_000;
  let issued = 0;
  let faulting: Promise<unknown> | undefined;
  let noticedAt: number | undefined;
  let stopAt = Infinity;
  async function worker() {
    while (issued < stopAt && performance.now() < until) {
      const n = issued++ % 40;
      if (issued === 1_000) faulting = fault();
      if (noticedAt === undefined && noticed()) {
        [noticedAt, stopAt] = [performance.now(), issued + 2_000];
      }
      try {
        const value = await client.call(n, { timeout: 8_000 });
        if (value === fib(n)) result.right++;
        else result.wrong++;
        if (noticedAt !== undefined) result.failover ??= performance.now() - noticedAt;
      } catch (error) {
        const code = error instanceof RpcError ? error.code : String(error);
        result.failures.set(code, (result.failures.get(code) ?? 0) + 1);
        await delay(50);
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  await faulting;
  assert.ok(noticedAt !== undefined, "the client noticed the fault during the load");
  return result;
}

// ─── Part 1: the tutorial ──────────────────────────────────────────────────

Deno.test("fib(n) is exact for small and large n and refuses anything else", () => {
  assert.deepEqual([0, 1, 2, 3, 10, 30].map(fib), [0n, 1n, 1n, 2n, 55n, 832040n]);
  assert.equal(fib(90), 2880067194370816120n); // past 2^53
  assert.equal(fib(1000) % 1_000_000_007n, 517691607n);
  assert.equal(fib(MAX_N).toString().length, 2090);
  for (const n of [-1, 1.5, NaN, MAX_N + 1]) assert.throws(() => fib(n), RangeError);
});

Deno.test("the server answers each call with fib(n) and logs one line per request", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { client } = pair;
  const numbers = [0, 1, 2, 10, 30, 90, 1000];
  for (const n of numbers) assert.equal(await client.call(n), fib(n), `fib(${n})`);
  assert.deepEqual(logged, [
    " [x] Awaiting RPC requests",
    ...numbers.map((n) => ` [.] fib(${n})`),
  ]);
});

Deno.test("200 calls at once over one client all get the right answers", async () => {
  await using pair = await startPair();
  const { client } = pair;
  const numbers = Array.from({ length: 200 }, (_, i) => (i * 37) % 500);
  const results = await Promise.all(numbers.map((n) => client.call(n)));
  assert.deepEqual(results, numbers.map(fib));
  assert.equal(client.pendingCalls, 0);
  assert.equal(client.droppedReplies, 0);
});

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
  await broker.channel.assertQueue(broker.queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  await using client = await FibonacciRpcClient.connect({
    url: URL,
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
  await using _server = await RpcServer.start({ url: URL, queue: broker.queue, ...quiet });
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
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  assert.equal(await client.call(10), 55n);
  await waitFor("both extra replies", () => client.droppedReplies === 2);
  assert.equal(await client.call(11), 89n);
  await waitFor("the next extra replies", () => client.droppedReplies === 4);
  assert.equal(client.pendingCalls, 0);
});

Deno.test("a server that dies between its reply and its ack: the request is answered again and the client drops the duplicate", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  // The first server replies, then dies before it acks.
  const doomed: ChannelModel = await amqp.connect(URL);
  await using _doomed = { [Symbol.asyncDispose]: () => doomed.close().catch(() => {}) };
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
  await using _second = await RpcServer.start({
    url: URL,
    queue: broker.queue,
    handler: (n) => (seen.push(n), fib(n)),
    ...quiet,
  });
  await waitFor("the duplicate reply", () => client.droppedReplies === 1);
  assert.deepEqual(seen, [8], "the second server answered the redelivered request");
  assert.equal(client.pendingCalls, 0);
  assert.equal(await client.call(9), 34n);
});

Deno.test("two servers on one queue share the work", async () => {
  await using broker = await openBroker();
  // Each request takes 10 ms of work, and prefetch 1 hands a server one at a
  // time: while one server works, the next request goes to the other.
  const options = {
    url: URL,
    queue: broker.queue,
    prefetch: 1,
    handler: slowHandler(10),
    ...quiet,
  };
  await using first = await RpcServer.start(options);
  await using second = await RpcServer.start(options);
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  const numbers = Array.from({ length: 20 }, (_, i) => i);
  assert.deepEqual(await Promise.all(numbers.map((n) => client.call(n))), numbers.map(fib));
  assert.equal(first.answered + second.answered, 20);
  assert.ok(first.answered >= 5 && second.answered >= 5, `${first.answered} / ${second.answered}`);
});

// ─── Part 2: what the tutorial leaves open ─────────────────────────────────

Deno.test("bad requests get an error reply with their correlation id and are acked", async () => {
  await using broker = await openBroker();
  const logged: string[] = [];
  await using server = await RpcServer.start({
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
  assert.equal(logged.filter((line) => line.startsWith(" [!] Bad request: ")).length, 8);
});

Deno.test("a request without reply_to is acked with a log line; one without correlation_id gets an error reply", async () => {
  await using broker = await openBroker();
  const logged: string[] = [];
  await using server = await RpcServer.start({
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
  // Requests are taken in order: the one without reply_to was dealt with before the reply above.
  assert.ok(logged.includes(" [!] Dropped a request without reply_to: nobody to answer"));
  await server.close();
  assert.equal(await broker.messageCount(broker.queue), 0, "both acked");
  assert.equal(server.answered, 1);
});

Deno.test("a handler that fails sends an error reply, an RpcError with code remote, and the server goes on", async () => {
  const logged: string[] = [];
  await using pair = await startPair({
    handler: (n) => {
      if (n === 13) throw new Error("thirteen is unlucky");
      if (n === 14) return Promise.reject(new Error("fourteen is late"));
      return fib(n);
    },
    log: (line) => logged.push(line),
  });
  const { server, client } = pair;
  await assert.rejects(client.call(13), (error: RpcError) => {
    assert.ok(error instanceof RpcError);
    assert.equal(error.code, "remote");
    assert.equal(error.message, "thirteen is unlucky");
    return true;
  });
  await assert.rejects(client.call(14), { code: "remote", message: "fourteen is late" });
  await assert.rejects(client.call(MAX_N + 1), {
    code: "remote",
    message: `n must be a decimal integer from 0 to ${MAX_N}, got "${MAX_N + 1}"`,
  });
  assert.equal(await client.call(15), 610n);
  assert.equal(server.answered, 4);
  assert.ok(logged.includes(" [!] Handler failed: thirteen is unlucky"));
  assert.ok(logged.includes(" [!] Handler failed: fourteen is late"));
});

Deno.test("a queue that exists with other settings is used as it is, and the server says how to change it", async () => {
  await using broker = await openBroker();
  const quorum = { durable: true, arguments: { "x-queue-type": "quorum" } };
  const classic = { durable: true }; // as older copies of the tutorials declare it
  for (const [queueType, existing] of [["quorum", classic], ["classic", quorum]] as const) {
    const queue = broker.newQueue();
    await broker.channel.assertQueue(queue, existing);
    const logged: string[] = [];
    await using _server = await RpcServer.start({
      url: URL,
      queue,
      queueType,
      log: (line) => logged.push(line),
    });
    await using client = await FibonacciRpcClient.connect({ url: URL, queue });
    assert.equal(await client.call(9), 34n);
    assert.deepEqual(logged.slice(0, 2), [
      ` [!] Queue "${queue}" exists with other settings; using it as it is ` +
      `(to declare it ${queueType}: rabbitmqctl delete_queue ${queue})`,
      " [x] Awaiting RPC requests",
    ]);
    // Declaring it as it was still works: the server left the queue alone.
    await broker.withChannel((channel) => channel.assertQueue(queue, existing));
  }
});

Deno.test("a call to a queue that does not exist fails at once with no-route", async () => {
  await using broker = await openBroker(); // names the queue, never declares it
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
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

Deno.test("a call that times out while no server consumes the queue says so", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  assert.equal(await client.consumerCount(), 0);
  await assert.rejects(client.call(7, { timeout: 300 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    // The request expires at its deadline, so the look at the queue may or may not still see it.
    assert.match(
      error.message,
      new RegExp(
        `^fib\\(7\\): no reply within 300 ms: no server consumes "${broker.queue}" ` +
          `\\((0 requests|1 request) waiting in it; start one: deno run -A rpc_server\\.ts\\)$`,
      ),
    );
    assert.equal(error.diagnosis?.cause, "no-server");
    assert.equal(error.diagnosis?.consumers, 0);
    return true;
  });
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
      `fib(10): no reply within 500 ms: 1 server consumes "${broker.queue}" but none ` +
        "answered in time (0 requests waiting in it: overloaded? add servers, or allow more time)",
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
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
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

Deno.test("each request carries reply_to, a fresh correlation_id, and its deadline as expiration and x-deadline", async () => {
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
    url: URL,
    queue: broker.queue,
    timeout: 5_000,
  });
  const before = Date.now();
  assert.equal(await client.call(7), 13n);
  assert.equal(await client.call(8, { timeout: 2_000 }), 21n);
  const after = Date.now();
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
  }
  assert.notEqual(requests[0].properties.correlationId, requests[1].properties.correlationId);
});

Deno.test("a request nobody waits for any more expires in the queue and is never computed", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  await assert.rejects(client.call(20, { timeout: 100 }), { code: "timeout" });
  await waitFor("the request to expire", async () => await broker.messageCount(broker.queue) === 0);
  const seen: number[] = [];
  await using _server = await RpcServer.start({
    url: URL,
    queue: broker.queue,
    handler: (n) => (seen.push(n), fib(n)),
    skipLate: false, // so that only the expiration keeps fib(20) from being computed
    ...quiet,
  });
  assert.equal(await client.call(21), 10946n);
  assert.deepEqual(seen, [21], "fib(20) was never computed");
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
    await using server = await RpcServer.start({
      url: URL,
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

Deno.test("the server logs at most 20 requests a second, then one line a second saying how many more", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { server, client } = pair;
  const started = Date.now();
  await Promise.all(Array.from({ length: 100 }, (_, n) => client.call(n)));
  const seconds = Math.ceil((Date.now() - started) / 1000);
  await server.close(); // writes the last summary now
  const lines = logged.filter((line) => /^ \[\.\] fib\(\d+\)$/.test(line)).length;
  const summaries = logged.filter((line) => line.startsWith(" [.] Not shown: "));
  assert.ok(summaries.length > 0, "a summary line");
  for (const summary of summaries) {
    assert.match(summary, /^ \[\.\] Not shown: \d+ requests \(at most 20 lines a second\)$/);
  }
  const counted = summaries.reduce((sum, line) => sum + Number(/(\d+) requests/.exec(line)![1]), 0);
  assert.equal(lines + counted, 100, "each request is logged, or counted in a summary");
  assert.ok(lines <= 20 * (seconds + 1), `${lines} lines in ${seconds} s`);
});

Deno.test({
  name: "the server reconnects by itself after the broker closes its request connection",
  ...fromBrokerSide,
  async fn() {
    const logged: string[] = [];
    const url = URL_WITH_PASSWORD;
    await using pair = await startPair({ url, log: (line) => logged.push(line) });
    const { server, client } = pair;
    assert.equal(await client.call(3), 2n);
    await closeFromBroker(server.connectionName);
    await waitFor(
      "the server to consume again",
      () => logged.filter((line) => line === " [x] Awaiting RPC requests").length === 2,
    );
    assert.equal(await client.call(4), 3n);
    const lost = logged.findIndex((line) => line.startsWith(" [!] Lost "));
    assert.equal(
      logged[lost],
      ` [!] Lost ${shown(url)}: Connection closed: 320 (CONNECTION-FORCED) with message ` +
        `"CONNECTION_FORCED - closed by rpc_test"`,
    );
    assert.match(logged[lost + 1], / \[!\] Reconnecting to \S+ in \d+ ms$/);
    assert.equal(logged[lost + 2], ` [x] Connected to ${shown(url)}`);
    assert.equal(logged[lost + 3], " [x] Awaiting RPC requests");
    const password = new globalThis.URL(url).password;
    assert.ok(!logged.some((line) => line.includes(`:${password}@`)), "no password in the log");
  },
});

Deno.test({
  name: "the server reopens its reply connection after the broker closes it, and answers on",
  ...fromBrokerSide,
  async fn() {
    const logged: string[] = [];
    await using pair = await startPair({ log: (line) => logged.push(line) });
    const { server, client } = pair;
    assert.equal(await client.call(3), 2n);
    await closeFromBroker(`${server.connectionName} replies`);
    await waitFor(
      "the reply connection to be back",
      () => logged.includes(` [x] Connected to ${shown(URL)} (reply connection)`),
    );
    assert.equal(await client.call(4), 3n);
    assert.ok(
      logged.includes(
        ` [!] Lost ${shown(URL)}: Connection closed: 320 (CONNECTION-FORCED) with message ` +
          `"CONNECTION_FORCED - closed by rpc_test" (reply connection)`,
      ),
      logged.join("\n"),
    );
    assert.equal(
      logged.filter((line) => line === " [x] Awaiting RPC requests").length,
      1,
      "the request connection stayed up",
    );
  },
});

Deno.test({
  name: "when the broker closes the client's connection, calls in flight fail at once, " +
    "calls with retry are sent again, and the client reconnects",
  ...fromBrokerSide,
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
    assert.ok(logged.includes(` [x] Connected to ${shown(URL)}`), logged.join("\n"));
  },
});

Deno.test("a server whose queue is deleted under it declares it again and goes on", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { broker, client } = pair;
  assert.equal(await client.call(5), 5n);
  await broker.channel.deleteQueue(broker.queue);
  await waitFor(
    "the server to consume again",
    () => logged.filter((line) => line === " [x] Awaiting RPC requests").length === 2,
  );
  assert.ok(
    logged.includes(` [!] The broker cancelled the consumer of "${broker.queue}"; reconnecting`),
  );
  assert.equal(await client.call(6), 8n);
});

Deno.test("closing the server finishes and acks the requests in progress, then stops consuming", async () => {
  const held = heldHandler();
  // Classic: a quorum queue counts a cancelled consumer until its requests are acked.
  await using pair = await startPair({ handler: held.handler, queueType: "classic" });
  using _held = held; // released first, whatever happens, so that the server can close
  const { broker, server, client } = pair;
  const call = client.call(25);
  call.catch(() => {}); // awaited below; a failure before then must not go unhandled
  await waitFor("the request to be in progress", () => held.seen.length === 1);
  let closed = false;
  const closing = server.close().then(() => closed = true);
  await waitFor("the server to stop consuming", async () => await client.consumerCount() === 0);
  assert.equal(closed, false, "close() waits for the request in progress");
  held.release();
  await closing;
  assert.equal(await call, 75025n);
  assert.equal(await broker.messageCount(broker.queue), 0, "acked, not requeued");
  await assert.rejects(client.call(1, { timeout: 200 }), (error: RpcError) => {
    assert.equal(error.code, "timeout");
    assert.equal(error.diagnosis?.cause, "no-server");
    return true;
  });
});

Deno.test("a broker that vanishes mid-call fails the call with connection-lost, and the client recovers", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  const seen: number[] = [];
  await using _server = await RpcServer.start({
    url: URL,
    queue: broker.queue,
    handler: slowHandler(1_000, seen),
    ...quiet,
  });
  const logged: string[] = [];
  await using client = await FibonacciRpcClient.connect({
    url: proxy.url,
    queue: broker.queue,
    log: (line) => logged.push(line),
  });
  assert.equal(await client.call(3), 2n);
  const call = client.call(10, { timeout: 20_000 });
  const started = performance.now();
  const rejected = assert.rejects(call, (error: RpcError) => {
    assert.equal(error.code, "connection-lost");
    return true;
  });
  await waitFor("the server to work on fib(10)", () => seen.length === 2);
  proxy.cut();
  await rejected;
  assert.ok(performance.now() - started < 2_000, "rejected at once, not at the deadline");
  assert.equal(client.pendingCalls, 0);
  await assert.rejects(client.call(1), { code: "connection-lost" });
  await proxy.restore();
  let result: bigint | undefined;
  await waitFor("a call to work again", async () => {
    result = await client.call(6, { timeout: 3_000 }).catch(() => undefined);
    return result !== undefined;
  }, 15_000);
  assert.equal(result, 8n);
  assert.ok(logged.some((line) => line.includes("broke off")), logged.join("\n"));
});

Deno.test("a call with retry waits for the broker, but never past its deadline", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  await using _server = await RpcServer.start({ url: URL, queue: broker.queue, ...quiet });
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

Deno.test("a server whose broker vanishes mid-request reconnects and the request is answered", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  const seen: number[] = [];
  const logged: string[] = [];
  await using server = await RpcServer.start({
    url: proxy.url,
    queue: broker.queue,
    handler: slowHandler(500, seen),
    log: (line) => logged.push(line),
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
  const call = client.call(12, { timeout: 20_000 });
  await waitFor("the request to be in progress", () => seen.length === 1);
  proxy.cut();
  await waitFor("the server to notice", () => logged.some((line) => line.includes("broke off")));
  await proxy.restore();
  assert.equal(await call, 144n, "the unacked request went back to the queue and was answered");
  assert.ok(seen.length >= 2, `computed again after the redelivery: ${seen}`);
  assert.ok(logged.some((line) => line.startsWith(" [x] Connected to")), logged.join("\n"));
  assert.ok(server.answered >= 1);
});

Deno.test({
  name: "requests with raw non-UTF-8 bytes in reply_to or correlation_id never stall the server",
  ignore: !pikaInstalled,
  async fn() {
    await using broker = await openBroker();
    const logged: string[] = [];
    await using server = await RpcServer.start({
      url: URL,
      queue: broker.queue,
      prefetch: 10,
      log: (line) => logged.push(line),
    });
    const { queue: replyTo, replies } = await broker.replyQueue();
    // More than prefetch of each kind: raw correlation ids (short and long),
    // raw reply_to, both.
    for (const field of ["correlation_id", "reply_to", "both"]) {
      const published = await new Deno.Command(PYTHON, {
        args: [
          "interop/hostile_publish.py",
          "--queue",
          broker.queue,
          "--count",
          "24",
          "--field",
          field,
          "--reply-to",
          replyTo,
        ],
        env: { AMQP_URL: URL },
        stdout: "null",
        stderr: "piped",
        signal: AbortSignal.timeout(20_000),
      }).output();
      assert.equal(published.code, 0, new TextDecoder().decode(published.stderr));
    }
    // A normal request after them, on the same reply queue: once its answer is
    // back, every hostile request before it has been taken and settled.
    broker.channel.sendToQueue(broker.queue, Buffer.from("10"), {
      replyTo,
      correlationId: "after-the-hostile-ones",
    });
    await waitFor("the normal reply", () => replies.length > 0, 5_000);
    assert.deepEqual(
      replies.map((reply) => [reply.properties.correlationId, reply.content.toString()]),
      [["after-the-hostile-ones", "55"]],
      "no reply with an altered correlation id",
    );
    await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
    assert.equal(await client.call(11, { timeout: 5_000 }), 89n);
    await server.close(); // writes the summary of log lines held back
    const summarised = logged.map((line) =>
      Number(line.match(/Not shown: .*?(\d+) refused/)?.[1] ?? 0)
    );
    assert.equal(
      logged.filter((line) => line.includes("not UTF-8")).length +
        summarised.reduce((sum, count) => sum + count, 0),
      72,
      "each dropped request logged, or counted at load",
    );
    assert.equal(await broker.messageCount(broker.queue), 0, "all acked, none left to redeliver");
  },
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
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
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
    url: URL,
    queue: broker.queue,
    maxReplyBytes: 6,
  });
  await assert.rejects(strict.call(3), { code: "bad-reply" });
  await assert.rejects(
    FibonacciRpcClient.connect({ url: URL, queue: broker.queue, maxReplyBytes: 0 }),
    { name: "RangeError", message: "maxReplyBytes must be a positive whole number, got 0" },
  );
});

Deno.test("an overloaded server skips requests whose callers gave up, and catches up at once", async () => {
  await using broker = await openBroker();
  const seen: number[] = [];
  await using server = await RpcServer.start({
    url: URL,
    queue: broker.queue,
    handler: slowHandler(100, seen),
    ...quiet,
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
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

Deno.test("with no server at all, a timeout says that nobody consumes the queue, once for a whole burst", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  await using client = await FibonacciRpcClient.connect({ url: URL, queue: broker.queue });
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

// On a cluster: several broker URLs, and a node that goes away mid-load.

Deno.test({
  name: "on a 3-node cluster, the pair fails over when the node it is on stops",
  ignore: clusterProblem !== "",
  async fn(t) {
    const urls = (await cluster("start")).split(",");
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    try {
      await t.step(
        "fail-fast: calls in flight fail with connection-lost, then succeed again on another node",
        async () => {
          const queue = `rpc_test.cluster.${crypto.randomUUID()}`;
          await using first = await RpcServer.start({ url: urls, queue, log });
          await using second = await RpcServer.start({ url: urls, queue, log });
          const clientLines: string[] = [];
          await using client = await FibonacciRpcClient.connect({
            url: urls,
            queue,
            log: (line) => clientLines.push(line),
          });
          const started = performance.now();
          const result = await load(
            client,
            40,
            () => cluster("kill-node", "1"),
            () => clientLines.some((line) => line.includes("Lost")),
          );
          console.log(
            `    ${result.right} right, ${result.wrong} wrong, failures ${
              JSON.stringify([...result.failures])
            }, ` +
              `failover ${result.failover?.toFixed(0)} ms, in ${
                (performance.now() - started).toFixed(0)
              } ms`,
          );
          assert.equal(result.wrong, 0);
          assert.equal(client.pendingCalls, 0, "every call settled");
          for (const code of result.failures.keys()) {
            assert.ok(["connection-lost", "timeout"].includes(code), `failure code ${code}`);
          }
          assert.ok((result.failures.get("connection-lost") ?? 0) > 0, "the node loss was felt");
          assert.ok(
            result.failover !== undefined && result.failover < 10_000,
            `failover ${result.failover} ms`,
          );
          assert.ok(
            lines.some((line) =>
              /Connected to amqp:\/\/guest:\*\*\*@127\.0\.0\.1:568[23]/.test(line)
            ),
            "the servers say which node they are on now",
          );
          assert.ok(first.answered > 0 && second.answered > 0);
          // Both servers answer on a surviving node.
          const after = await Promise.all(
            Array.from({ length: 20 }, (_, n) => client.call(n, { timeout: 5_000 })),
          );
          assert.deepEqual(after, Array.from({ length: 20 }, (_, n) => fib(n)));
          await client.close();
          await first.close();
          await second.close();
          await deleteQueue(urls, queue);
        },
      );
      await cluster("start-node", "1");
      await t.step("with retry on, no call fails when the node goes", async () => {
        const queue = `rpc_test.cluster.${crypto.randomUUID()}`;
        const order = [urls[1], urls[2], urls[0]]; // all on node 2 first
        await using _first = await RpcServer.start({ url: order, queue, log });
        await using _second = await RpcServer.start({ url: order, queue, log });
        const clientLines: string[] = [];
        await using client = await FibonacciRpcClient.connect({
          url: order,
          queue,
          log: (line) => clientLines.push(line),
          retry: true,
        });
        const result = await load(
          client,
          40,
          () => cluster("stop-node", "2"),
          () => clientLines.some((line) => line.includes("Lost")),
        );
        console.log(
          `    ${result.right} right, ${result.wrong} wrong, failures ${
            JSON.stringify([...result.failures])
          }`,
        );
        assert.equal(result.wrong, 0);
        assert.deepEqual([...result.failures], [], "no call failed");
        assert.ok(result.right >= 3_000);
        assert.equal(client.pendingCalls, 0);
        await client.close();
        await _first.close();
        await _second.close();
        await deleteQueue(urls, queue);
      });
      await cluster("start-node", "2");
      await t.step(
        "replies to direct reply-to callers on a dead node do not take the servers down",
        async () => {
          const queue = `rpc_test.cluster.${crypto.randomUUID()}`;
          const serverLines: string[] = [];
          const serverLog = (line: string) => serverLines.push(line);
          const seen: number[] = [];
          const options = { url: urls, queue, handler: slowHandler(200, seen), log: serverLog };
          await using _first = await RpcServer.start(options);
          await using _second = await RpcServer.start(options);
          // A caller on node 3 whose replies come by direct reply-to, and a
          // caller on node 1 with the tutorial's callback queue.
          const doomed = await FibonacciRpcClient.connect({
            url: urls[2],
            queue,
            replyQueue: "direct",
          });
          await using survivor = await FibonacciRpcClient.connect({ url: urls[0], queue });
          const doomedCalls = Promise.allSettled(
            Array.from({ length: 10 }, (_, n) => doomed.call(n, { timeout: 60_000 })),
          );
          await waitFor("the servers to hold the doomed calls", () => seen.length >= 2);
          await cluster("kill-node", "3");
          const outcomes = await doomedCalls;
          assert.ok(outcomes.some((outcome) => outcome.status === "rejected"));
          await doomed.close();
          // The servers finish the doomed requests (their replies go nowhere),
          // and answer the survivor.
          await waitFor("the doomed requests to be done", () => seen.length >= 10, 30_000);
          const results = await Promise.all(
            Array.from({ length: 10 }, (_, n) => survivor.call(n + 10, { timeout: 20_000 })),
          );
          assert.deepEqual(results, Array.from({ length: 10 }, (_, n) => fib(n + 10)));
          const crashes = serverLines.filter((line) =>
            line.includes("(reply connection)") && line.includes("Lost")
          );
          console.log(
            `    the reply connections were lost ${crashes.length} times: ${crashes[0] ?? ""}`,
          );
          assert.ok(
            !serverLines.some((line) =>
              line.includes("Lost") && !line.includes("(reply connection)")
            ),
            `the consuming connections stayed up: ${serverLines.join("\n")}`,
          );
          await survivor.close();
          await _first.close();
          await _second.close();
          await deleteQueue(urls, queue);
        },
      );
      await t.step("one command-line call with three --url flags answers", async () => {
        const queue = `rpc_test.cluster.${crypto.randomUUID()}`;
        await using _server = await RpcServer.start({ url: urls, queue, ...quiet });
        const { code, stdout, stderr } = await run("rpc_client.ts", [
          ...urls.flatMap((url) => ["--url", url]),
          "--queue",
          queue,
          "30",
        ]);
        assert.equal(stderr, "");
        assert.equal(stdout, " [x] Requesting fib(30)\n [.] Got 832040\n");
        assert.equal(code, 0);
        await _server.close();
        await deleteQueue(urls, queue);
      });
    } finally {
      await cluster("stop");
    }
  },
});

Deno.test("a password in a broker URL is never printed", async () => {
  const url = withPassword("hunter2-secret");
  const refusal = `cannot log in to ${shown(url)}: access refused (wrong user name or password?)`;
  await assert.rejects(RpcServer.start({ url, ...quiet }), { message: refusal });
  await assert.rejects(FibonacciRpcClient.connect({ url }), { message: refusal });
  const outputs = await Promise.all([
    run("rpc_server.ts", ["--url", url]),
    run("rpc_client.ts", ["--url", url, "1"]),
    run("rpc_client.ts", ["--url", "http://u:hunter2-secret@x", "1"]),
    run("rpc_client.ts", ["--url", url, "amqp://u:hunter2-secret@x"]),
  ]);
  for (const { code, stdout, stderr } of outputs) {
    assert.doesNotMatch(stdout + stderr, /hunter2/);
    assert.equal(stderr.trimEnd().split("\n").length, 1, stderr);
    assert.ok(code === 1 || code === 2, stderr);
  }
  assert.equal(outputs[0].stderr, `rpc_server: ${refusal}\n`);
  assert.equal(outputs[1].stderr, `rpc_client: ${refusal}\n`);
});

// ─── Interop with the other tutorials ──────────────────────────────────────

// --- interop with the official tutorial programs ----------------------------
//
// interop/peer_server.py and interop/peer_client.py are small pika programs
// of our own that declare and reply as the official tutorial programs do:
// `--declare quorum` as today's servers (since 2026-03-16), `--declare
// classic` as older copies and amqplib's bundled examples, `--declare none`
// as today's clients; `--reply exclusive` (Python's) or `direct` (Node's).

const interop = { ignore: !pikaInstalled, sanitizeResources: true };

/** Runs a Python program of interop/ to its end, on `queue`, with a deadline. */
async function runPeer(script: string, args: string[], queue: string, timeout = 20_000) {
  const output = await new Deno.Command(PYTHON, {
    args: [`interop/${script}`, ...args],
    env: { RPC_QUEUE: queue, AMQP_URL: URL },
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

/**
 * Starts interop/peer_server.py on `queue`; disposing it stops it by its PID
 * (SIGTERM, then SIGKILL after 5 s) and waits for it.
 */
function spawnPeerServer(declare: "quorum" | "classic", queue: string) {
  const child = new Deno.Command(PYTHON, {
    args: ["interop/peer_server.py", "--declare", declare],
    env: { RPC_QUEUE: queue, AMQP_URL: URL },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = { stdout: "", stderr: "" };
  const decoder = new TextDecoder();
  const collect = (key: keyof typeof output) =>
    new WritableStream<Uint8Array>({
      write: (chunk) => void (output[key] += decoder.decode(chunk)),
    });
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
  async function stop() {
    if (!exited) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => exited || child.kill("SIGKILL"), 5_000);
      await status.finally(() => clearTimeout(killer));
    }
    return await status;
  }
  return {
    status,
    stop,
    get exited() {
      return exited;
    },
    get stdout() {
      return output.stdout;
    },
    get stderr() {
      return output.stderr;
    },
    [Symbol.asyncDispose]: async () => void await stop(),
  };
}

/** Our command-line server on `queue`; disposing it kills it if still running. */
async function spawnOurServer(queue: string, ...args: string[]) {
  const server = spawn("rpc_server.ts", ["--queue", queue, ...args]);
  await waitFor(
    "our server to start",
    () => server.stdout.includes("Awaiting RPC requests") || server.stderr !== "",
  );
  assert.equal(server.stderr, "");
  return server;
}

/** Waits until their server consumes, or fails with what it said. */
async function peerReady(peer: ReturnType<typeof spawnPeerServer>) {
  await waitFor("their server to be ready", () => peer.stdout.includes("ready on") || peer.exited);
  assert.match(peer.stdout, /^ \[x\] peer server ready on \S+ \((quorum|classic)\)\n/, peer.stderr);
}

/** Stops one of our command-line servers with SIGTERM; it must exit 0. */
async function stopOurs(server: ReturnType<typeof spawn>) {
  server.child.kill("SIGTERM");
  assert.equal((await server.status).code, 0, server.stderr);
}

/** Stops their server with SIGTERM; it must exit 0 and say so. */
async function stopTheirs(peer: ReturnType<typeof spawnPeerServer>) {
  assert.equal((await peer.stop()).code, 0, peer.stderr);
  assert.match(peer.stdout, / \[x\] peer server stopped \(SIGTERM\)\n$/);
}

/** Declares `queue` on a channel of its own: "ok", or the broker's refusal code. */
async function declareAs(
  broker: Awaited<ReturnType<typeof openBroker>>,
  queue: string,
  type: "quorum" | "classic",
) {
  const channel = await broker.connection.createChannel();
  channel.on("error", () => {});
  try {
    await channel.assertQueue(
      queue,
      type === "quorum"
        ? { durable: true, arguments: { "x-queue-type": "quorum" } }
        : { durable: false },
    );
    return "ok";
  } catch (error) {
    return `refused: ${(error as { code?: number }).code}`;
  } finally {
    await channel.close().catch(() => {});
  }
}

/** How many consumers `queue` has, asked on a channel of its own. */
async function consumers(broker: Awaited<ReturnType<typeof openBroker>>, queue: string) {
  const channel = await broker.connection.createChannel();
  channel.on("error", () => {});
  try {
    return (await channel.checkQueue(queue)).consumerCount;
  } finally {
    await channel.close().catch(() => {});
  }
}

/** Their client (declaring `declare` first) must get fib(n) from whatever serves `queue`. */
async function theirClientGets(
  queue: string,
  n: number,
  expected: bigint,
  declare: "none" | "quorum" | "classic" = "none",
  reply: "exclusive" | "direct" = "exclusive",
) {
  const output = await runPeer(
    "peer_client.py",
    [String(n), "--declare", declare, "--reply", reply],
    queue,
  );
  assert.equal(output.stderr, "");
  assert.equal(output.stdout, ` [.] Got ${expected}\n`);
  assert.equal(output.code, 0);
}

/** Our client, as a library and on the command line, must get answers on `queue`. */
async function ourClientGets(queue: string) {
  await using client = await FibonacciRpcClient.connect({ url: URL, queue });
  assert.deepEqual(await Promise.all([0, 1, 10, 20, 90].map((n) => client.call(n))), [
    0n,
    1n,
    55n,
    6765n,
    2880067194370816120n,
  ]);
  const cli = await run("rpc_client.ts", ["--queue", queue, "25"]);
  assert.equal(cli.stdout, " [x] Requesting fib(25)\n [.] Got 75025\n");
  assert.equal(cli.code, 0);
}

/** Waits for our server to log that it takes `queue` as it is, after a 406. */
async function usesItAsItIs(server: ReturnType<typeof spawn>, queue: string) {
  const start = ` [!] Queue "${queue}" exists with other settings; using it as it is`;
  await waitFor(
    `our server to log "${start}"`,
    () => server.stdout.split("\n").some((line) => line.startsWith(start)),
  );
}

Deno.test({
  name: "interop: today's tutorial clients (no rpc_queue declared; exclusive queue or " +
    "direct reply-to) get their answers from our server",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    await using ours = await spawnOurServer(broker.queue);
    await theirClientGets(broker.queue, 30, 832040n, "none", "exclusive");
    await theirClientGets(broker.queue, 90, 2880067194370816120n, "none", "direct");
    await stopOurs(ours);
  },
});

Deno.test({
  name: "interop: our client gets its answers from their server, whether it declared the " +
    "queue quorum or classic",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    for (const declare of ["quorum", "classic"] as const) {
      const queue = broker.newQueue();
      await using peer = spawnPeerServer(declare, queue);
      await peerReady(peer);
      assert.equal(await declareAs(broker, queue, declare), "ok", `their ${declare} queue`);
      await ourClientGets(queue);
      await stopTheirs(peer);
    }
  },
});

Deno.test({
  name: "interop, quorum on both sides: theirs first then ours, and ours first then theirs, " +
    "both work with no 406 and no warning",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    // Theirs declares first, ours joins.
    const first = broker.newQueue();
    await using peer1 = spawnPeerServer("quorum", first);
    await peerReady(peer1);
    await using ours1 = await spawnOurServer(first);
    assert.doesNotMatch(ours1.stdout, /\[!\]/);
    assert.equal(await consumers(broker, first), 2);
    await theirClientGets(first, 30, 832040n, "quorum");
    await theirClientGets(first, 31, 1346269n, "none", "direct");
    await ourClientGets(first);
    // Ours declares first, theirs joins.
    const second = broker.newQueue();
    await using ours2 = await spawnOurServer(second);
    await using peer2 = spawnPeerServer("quorum", second);
    await peerReady(peer2);
    assert.equal(await consumers(broker, second), 2);
    await theirClientGets(second, 30, 832040n, "quorum");
    await ourClientGets(second);
    assert.doesNotMatch(ours1.stdout + ours2.stdout, /\[!\]/);
    for (const peer of [peer1, peer2]) await stopTheirs(peer);
    for (const ours of [ours1, ours2]) await stopOurs(ours);
  },
});

Deno.test({
  name: "interop, our default vs their classic queue, theirs first: our server gets 406, " +
    "says it uses the queue as it is, and both serve",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    await using peer = spawnPeerServer("classic", broker.queue);
    await peerReady(peer);
    await using ours = await spawnOurServer(broker.queue);
    await usesItAsItIs(ours, broker.queue);
    assert.equal(await consumers(broker, broker.queue), 2);
    assert.equal(await declareAs(broker, broker.queue, "classic"), "ok", "still their queue");
    await theirClientGets(broker.queue, 30, 832040n, "classic"); // amqplib's bundled client
    await theirClientGets(broker.queue, 31, 1346269n, "none", "direct");
    await ourClientGets(broker.queue);
    await stopTheirs(peer);
    await stopOurs(ours);
  },
});

Deno.test({
  name: "interop, our default vs their classic queue, ours first: their server and " +
    "amqplib's bundled client get 406 and exit 3; ours serves on",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    await using ours = await spawnOurServer(broker.queue);
    const refusal = new RegExp(
      `^peer_(server|client): 406, ${broker.queue} exists with other settings: ` +
        `PRECONDITION_FAILED - inequivalent arg 'durable'.*\n$`,
    );
    const server = await runPeer("peer_server.py", ["--declare", "classic"], broker.queue);
    assert.match(server.stderr, refusal);
    assert.equal(server.stdout, "");
    assert.equal(server.code, 3);
    const client = await runPeer("peer_client.py", ["5", "--declare", "classic"], broker.queue);
    assert.match(client.stderr, refusal);
    assert.equal(client.code, 3);
    assert.equal(await declareAs(broker, broker.queue, "quorum"), "ok", "still our queue");
    await theirClientGets(broker.queue, 30, 832040n, "none");
    await ourClientGets(broker.queue);
    assert.doesNotMatch(ours.stdout, /\[!\]/);
    await stopOurs(ours);
  },
});

Deno.test({
  name: "interop: hostile_publish.py puts raw non-UTF-8 correlation_id and reply_to bytes " +
    "on the wire, and pika reads them back unchanged",
  ...interop,
  async fn() {
    for (const field of ["correlation_id", "reply_to", "both"]) {
      const output = await runPeer(
        "hostile_publish.py",
        ["--check", "--count", "4", "--field", field],
        "unused",
      );
      assert.equal(output.stderr, "");
      assert.match(output.stdout, / \(4 and 100 long\) arrived unchanged\n$/);
      assert.equal(output.code, 0);
    }
  },
});

Deno.test({
  name: "interop, with --queue-type classic: our server and a classic peer work in either " +
    "order; with their quorum queue, ours uses it as it is (theirs first) or theirs gets 406 " +
    "(ours first)",
  ...interop,
  async fn() {
    await using broker = await openBroker();
    // Their classic queue first, ours joins: the same declaration, no warning.
    const first = broker.newQueue();
    await using peer1 = spawnPeerServer("classic", first);
    await peerReady(peer1);
    await using ours1 = await spawnOurServer(first, "--queue-type", "classic");
    assert.doesNotMatch(ours1.stdout, /\[!\]/);
    assert.equal(await consumers(broker, first), 2);
    await theirClientGets(first, 30, 832040n, "classic");
    await ourClientGets(first);
    // Ours first, declared non-durable classic; theirs and amqplib's client join.
    const second = broker.newQueue();
    await using ours2 = await spawnOurServer(second, "--queue-type", "classic");
    assert.equal(await declareAs(broker, second, "quorum"), "refused: 406", "not quorum");
    await using peer2 = spawnPeerServer("classic", second);
    await peerReady(peer2);
    await theirClientGets(second, 40, 102334155n, "classic");
    await ourClientGets(second);
    assert.doesNotMatch(ours2.stdout, /\[!\]/);
    // Today's quorum queue first: ours gets 406 and uses it as it is.
    const third = broker.newQueue();
    await using peer3 = spawnPeerServer("quorum", third);
    await peerReady(peer3);
    await using ours3 = await spawnOurServer(third, "--queue-type", "classic");
    await usesItAsItIs(ours3, third);
    await ourClientGets(third);
    // Ours classic first: today's server gets 406 and exits 3.
    const fourth = broker.newQueue();
    await using ours4 = await spawnOurServer(fourth, "--queue-type", "classic");
    const refused = await runPeer("peer_server.py", ["--declare", "quorum"], fourth);
    assert.match(refused.stderr, /^peer_server: 406, .* inequivalent arg 'durable'/);
    assert.equal(refused.code, 3);
    await ourClientGets(fourth);
    for (const peer of [peer1, peer2, peer3]) await stopTheirs(peer);
    for (const ours of [ours1, ours2, ours3, ours4]) await stopOurs(ours);
  },
});

// ─── Part 3: the command line ──────────────────────────────────────────────

Deno.test("the command-line pair works end to end, and the server exits 0 on SIGTERM", async () => {
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
  // --verbose shows how each reply finds its call; here over direct reply-to.
  const verbose = await run("rpc_client.ts", [
    ...["--url", URL, "--queue", broker.queue],
    ...["--reply-queue", "direct", "--retry", "--verbose", "12"],
  ]);
  assert.equal(verbose.stdout, " [x] Requesting fib(12)\n [.] Got 144\n");
  assert.match(
    verbose.stderr,
    /^ \[>\] fib\(12\) sent, correlation_id (\w{8}), reply_to amq\.rabbitmq\.reply-to\n \[<\] reply \1: matches fib\(12\)\n$/,
  );
  assert.equal(verbose.code, 0);
  server.child.kill("SIGTERM");
  assert.equal((await server.status).code, 0);
  assert.equal(
    server.stdout,
    " [x] Awaiting RPC requests\n [.] fib(10)\n [.] fib(20)\n [.] fib(30)\n [.] fib(12)\n" +
      " [x] SIGTERM: finishing the requests in progress, then exiting\n",
  );
  assert.equal(server.stderr, "");
});

Deno.test("bad command-line input exits 2 with a one-line message", async () => {
  const cases: Array<[string, string[], string]> = [
    ["rpc_client.ts", [], "give at least one number, e.g. rpc_client.ts 30"],
    ["rpc_client.ts", ["abc"], 'n must be a non-negative integer, got "abc"'],
    ["rpc_client.ts", ["--", "-5"], 'n must be a non-negative integer, got "-5"'],
    ["rpc_client.ts", ["1.5"], 'n must be a non-negative integer, got "1.5"'],
    [
      "rpc_client.ts",
      ["99999999999999999999"],
      "n is too large: 99999999999999999999 (the server computes fib(n) up to n = 10000)",
    ],
    [
      "rpc_client.ts",
      ["--timeout", "0", "1"],
      '--timeout must be a positive whole number of ms, got "0"',
    ],
    [
      "rpc_client.ts",
      ["--timeout", "soon", "1"],
      '--timeout must be a positive whole number of ms, got "soon"',
    ],
    [
      "rpc_client.ts",
      ["--reply-queue", "mine", "1"],
      '--reply-queue must be "exclusive" or "direct", got "mine"',
    ],
    ["rpc_client.ts", ["--queue", "", "1"], "--queue must not be empty"],
    ["rpc_client.ts", ["--bogus", "1"], "Unknown option '--bogus'"],
    [
      "rpc_client.ts",
      ["--url", "http://x", "1"],
      '--url must be an amqp:// or amqps:// URL with a host, got "http://x"',
    ],
    [
      "rpc_client.ts",
      ["--url", "amqp://:5672", "1"],
      '--url must be an amqp:// or amqps:// URL with a host, got "amqp://:5672"',
    ],
    [
      "rpc_client.ts",
      ["--url", URL, "--url", "amqps//host", "1"],
      '--url (entry 2 of 2) must be an amqp:// or amqps:// URL with a host, got "amqps//host"',
    ],
    [
      "rpc_client.ts",
      ["--url", "", "1"],
      "--url must list one or more amqp:// URLs, separated by commas",
    ],
    [
      "rpc_server.ts",
      ["--url", "amqp://localhost:99999"],
      '--url must be an amqp:// or amqps:// URL with a host, got "amqp://localhost:99999"',
    ],
    [
      "rpc_server.ts",
      ["--prefetch", "0"],
      '--prefetch must be an integer from 1 to 65535, got "0"',
    ],
    [
      "rpc_server.ts",
      ["--prefetch", "70000"],
      '--prefetch must be an integer from 1 to 65535, got "70000"',
    ],
    [
      "rpc_server.ts",
      ["--prefetch", "ten"],
      '--prefetch must be an integer from 1 to 65535, got "ten"',
    ],
    [
      "rpc_server.ts",
      ["--queue-type", "stream"],
      '--queue-type must be "quorum" or "classic", got "stream"',
    ],
    ["rpc_server.ts", ["--queue", ""], "--queue must not be empty"],
    ["rpc_server.ts", ["--queue"], "Option '--queue <value>' argument missing"],
    ["rpc_server.ts", ["--verbose"], "Unknown option '--verbose'"],
  ];
  // Run at once (each takes a Deno start-up); compared all together, so that
  // a failure shows every case that differs.
  const outputs = await Promise.all(cases.map(async ([script, args]) => {
    const { code, stdout, stderr } = await run(script, args);
    return { what: `${script} ${args.join(" ")}`, code, stdout, stderr };
  }));
  assert.deepEqual(
    outputs,
    cases.map(([script, args, message]) => ({
      what: `${script} ${args.join(" ")}`,
      code: 2,
      stdout: "",
      stderr: `${script.replace(".ts", "")}: ${message} (see --help)\n`, // one line
    })),
  );
});

Deno.test("--help prints the usage and exits 0", async () => {
  for (const script of ["rpc_client.ts", "rpc_server.ts"]) {
    const { code, stdout, stderr } = await run(script, ["--help"]);
    assert.equal(code, 0);
    assert.equal(stderr, "");
    assert.match(stdout, new RegExp(`^Usage: deno run -A ${script} \\[options\\]`));
    assert.match(stdout, /--url URL/);
  }
});

Deno.test("the command-line client says so when no server consumes the queue, or there is no queue", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  const client = await run("rpc_client.ts", ["--queue", broker.queue, "--timeout", "1500", "7"]);
  assert.equal(client.code, 1);
  assert.equal(client.stdout, " [x] Requesting fib(7)\n");
  // The request expires at its deadline, so the look at the queue may or may not still see it.
  assert.match(
    client.stderr,
    new RegExp(
      `^ \\[!\\] No server is consuming "${broker.queue}"; waiting up to 1500 ms for one ` +
        `\\(start it: deno run -A rpc_server\\.ts\\)\n` +
        `rpc_client: fib\\(7\\): no reply within 1500 ms: no server consumes "${broker.queue}" ` +
        `\\((0 requests|1 request) waiting in it; start one: deno run -A rpc_server\\.ts\\)\n$`,
    ),
  );
  const queue = broker.newQueue();
  const missing = await run("rpc_client.ts", ["--queue", queue, "7"]);
  assert.equal(missing.code, 1);
  assert.equal(
    missing.stderr,
    `rpc_client: fib(7): no queue named "${queue}": is the server running?\n`,
  );
});

Deno.test("SIGINT stops the command-line server and client cleanly", async () => {
  await using broker = await openBroker();
  await using server = spawn("rpc_server.ts", ["--queue", broker.queue]);
  await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
  server.child.kill("SIGINT");
  assert.equal((await server.status).code, 0);
  assert.equal(
    server.stdout,
    " [x] Awaiting RPC requests\n [x] SIGINT: finishing the requests in progress, then exiting\n",
  );

  // Now the queue has no consumer: the client waits, and SIGINT ends the wait.
  await using client = spawn("rpc_client.ts", ["--queue", broker.queue, "5"]);
  await waitFor("the client to wait", () => client.stderr.includes("No server is consuming"));
  client.child.kill("SIGINT");
  assert.equal((await client.status).code, 130);
  assert.match(client.stderr, /\nrpc_client: interrupted; closing the connection\n$/);
  assert.doesNotMatch(client.stderr, /error:|at /);
});

Deno.test("the command-line client says in one line that the broker vanished, and exits 1", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  const seen: number[] = [];
  await using _server = await RpcServer.start({
    url: URL,
    queue: broker.queue,
    handler: slowHandler(3_000, seen),
    ...quiet,
  });
  const client = run("rpc_client.ts", ["--url", proxy.url, "--queue", broker.queue, "20"]);
  await waitFor("the request to reach the server", () => seen.length === 1);
  proxy.cut();
  const { code, stdout, stderr } = await client;
  assert.equal(code, 1);
  assert.equal(stdout, " [x] Requesting fib(20)\n");
  assert.equal(stderr, "rpc_client: fib(20): lost the connection to the broker\n");
});

Deno.test("deno task demo needs only --allow-net and --allow-env, and shows each reply matched to its call", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["task", "demo"],
    cwd: import.meta.dirname,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  // deno task prints the command it runs: the permissions are these two, no more.
  assert.equal(
    new TextDecoder().decode(output.stderr),
    "Task demo deno run --allow-net --allow-env rpc_demo.ts\n",
  );
  assert.equal(output.code, 0);
  assert.match(stdout, /client callback queue: amq\.gen-\S+\n/);
  const sent = /client {2}\[>\] fib\(1000\) sent, correlation_id (\w{8}), reply_to amq\.gen-/
    .exec(stdout);
  assert.ok(sent, stdout);
  assert.ok(stdout.includes(`client  [<] reply ${sent[1]}: matches fib(1000)\n`), stdout);
  assert.match(stdout, /fib\(90\) = 2880067194370816120\n/);
  assert.match(stdout, /no call waits for it, dropped\n {2}replies dropped so far: 1\n/);
  assert.match(stdout, /RpcError: n must be a decimal integer from 0 to 10000, got "20000"\n/);
  assert.match(stdout, /answered 8 requests\n$/);
});

// ─── Part 4: broker URLs and messages ──────────────────────────────────────

Deno.test("the Part 4 block is the same in both scripts", async () => {
  const part4 = async (script: string) => {
    const text = await Deno.readTextFile(new globalThis.URL(script, import.meta.url));
    const lines = text.split("\n");
    const start = lines.findIndex((line) =>
      line.startsWith("// ─── Part 4: broker URLs and messages")
    );
    const end = lines.findIndex((line) => line.startsWith("// ─── end of Part 4"));
    assert.ok(start >= 0, `${script}: no line starting "// ─── Part 4: broker URLs and messages"`);
    assert.ok(end > start, `${script}: no line starting "// ─── end of Part 4" after it`);
    return lines.slice(start, end + 1).join("\n");
  };
  assert.equal(await part4("rpc_server.ts"), await part4("rpc_client.ts"));
});

Deno.test("a burst of 200 calls leaves the client in a few socket writes, not one per call", async () => {
  await using broker = await openBroker();
  await using proxy = await startCountingProxy();
  await using _server = await RpcServer.start({ url: URL, queue: broker.queue, ...quiet });
  await using client = await FibonacciRpcClient.connect({ url: proxy.url, queue: broker.queue });
  assert.equal(await client.call(5), 5n); // the channel and the callback queue are set up
  await delay(200); // for the proxy to print what it read so far (time passing is the point)
  const before = proxy.reads.length;
  const results = await Promise.all(Array.from({ length: 200 }, () => client.call(10)));
  assert.ok(results.every((result) => result === 55n));
  await delay(200); // the same, for the burst
  const burst = proxy.reads.slice(before);
  const bytes = burst.reduce((sum, size) => sum + size, 0);
  assert.ok(bytes > 200 * 100, `the 200 requests went through the proxy: ${bytes} bytes`);
  assert.ok(burst.length <= 3, `${burst.length} writes for 200 requests: ${burst.join(" ")}`);
});

Deno.test("a bad AMQP_URL is a usage error naming the bad entry, with the password hidden", async () => {
  const cases: Array<[string, string]> = [
    [
      "http://user:hunter2@localhost",
      'AMQP_URL must be an amqp:// or amqps:// URL with a host, got "http://user:***@localhost/"',
    ],
    [`${URL},,${URL}`, "AMQP_URL must list one or more amqp:// URLs, separated by commas"],
    [
      `${URL}, amqp//user:hunter2@localhost`,
      'AMQP_URL (entry 2 of 2) must be an amqp:// or amqps:// URL with a host, got "amqp//user:***@localhost"',
    ],
  ];
  await Promise.all(
    ["rpc_server.ts", "rpc_client.ts"].flatMap((script) =>
      cases.map(async ([value, message]) => {
        const args = script === "rpc_client.ts" ? ["1"] : [];
        const output = await run(script, args, 20_000, { AMQP_URL: value });
        assert.equal(output.code, 2, `${script} with AMQP_URL=${value}`);
        assert.equal(output.stderr, `${script.replace(".ts", "")}: ${message} (see --help)\n`);
      })
    ),
  );
});

Deno.test("a bad broker URL given to the library throws a TypeError naming it, with the password hidden", async () => {
  const message =
    'the broker URL (entry 2 of 2) must be an amqp:// or amqps:// URL with a host, got "http://u:***@x/"';
  const url = [URL, "http://u:hunter2@x"];
  await assert.rejects(RpcServer.start({ url, ...quiet }), { name: "TypeError", message });
  await assert.rejects(FibonacciRpcClient.connect({ url }), { name: "TypeError", message });
});

Deno.test("with several broker URLs, the server and the client use the first that answers", async () => {
  await using broker = await openBroker();
  const url = ["amqp://127.0.0.1:1", URL]; // nothing listens on port 1
  const serverLog: string[] = [];
  const clientLog: string[] = [];
  await using _server = await RpcServer.start({
    url,
    queue: broker.queue,
    log: (line) => serverLog.push(line),
  });
  await using client = await FibonacciRpcClient.connect({
    url,
    queue: broker.queue,
    log: (line) => clientLog.push(line),
  });
  assert.equal(await client.call(10), 55n);
  assert.deepEqual(clientLog, [` [x] Connected to ${shown(URL)}`]);
  for (const connection of ["", " (reply connection)"]) {
    const line = ` [x] Connected to ${shown(URL)}${connection}`;
    assert.ok(serverLog.includes(line), `${line}, in:\n${serverLog.join("\n")}`);
  }
  assert.ok(serverLog.includes(" [x] Awaiting RPC requests"));
});

Deno.test("a broker that cannot be used is named in one line: refused, unknown host, unknown virtual host", async () => {
  const vhost = new globalThis.URL(URL_WITH_PASSWORD);
  vhost.pathname = "/no-such-vhost";
  const cases: Array<[string | string[], string]> = [
    [
      "amqp://u:hunter2@127.0.0.1:1",
      "cannot connect to amqp://u:***@127.0.0.1:1: connection refused (is RabbitMQ running?)",
    ],
    ["amqp://no-such-host.invalid", "cannot connect to amqp://no-such-host.invalid: unknown host"],
    [
      vhost.href,
      `cannot open virtual host "no-such-vhost" on ${shown(vhost.href)} ` +
      "(does it exist? rabbitmqctl list_vhosts)",
    ],
    [
      ["amqp://127.0.0.1:1", "amqp://127.0.0.1:2"],
      "cannot connect to amqp://127.0.0.1:1: connection refused (is RabbitMQ running?); " +
      "cannot connect to amqp://127.0.0.1:2: connection refused (is RabbitMQ running?)",
    ],
  ];
  for (const [url, message] of cases) {
    await assert.rejects(RpcServer.start({ url, ...quiet }), { message });
    await assert.rejects(FibonacciRpcClient.connect({ url }), { message });
  }
  const [server, client] = await Promise.all([
    run("rpc_server.ts", ["--url", vhost.href]),
    run("rpc_client.ts", ["--url", "amqp://127.0.0.1:1", "--url", "amqp://127.0.0.1:2", "1"]),
  ]);
  assert.equal(server.code, 1);
  assert.equal(server.stderr, `rpc_server: ${cases[2][1]}\n`);
  assert.equal(client.code, 1);
  assert.equal(client.stderr, `rpc_client: ${cases[3][1]}\n`);
});

Deno.test("a listener that never speaks AMQP: both programs give up after 10 s with one line naming it", async () => {
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const connection of silent) held.push(connection); // accept, never answer
  })();
  const url = `amqp://guest:hunter2@127.0.0.1:${silent.addr.port}`;
  try {
    const started = performance.now();
    const [server, client] = await Promise.all([
      run("rpc_server.ts", ["--url", url], 30_000),
      run("rpc_client.ts", ["--url", url, "5"], 30_000),
    ]);
    const elapsed = performance.now() - started;
    assert.ok(elapsed > 9_000 && elapsed < 20_000, `gave up after ${elapsed} ms`);
    const expected = `cannot connect to amqp://guest:***@127.0.0.1:${silent.addr.port}: ` +
      "no AMQP answer within 10 s";
    for (const [name, result] of [["rpc_server", server], ["rpc_client", client]] as const) {
      assert.equal(result.code, 1, name);
      assert.ok(result.stderr.startsWith(`${name}: ${expected}`), result.stderr);
      assert.equal(result.stderr.trimEnd().split("\n").length, 1, result.stderr);
      assert.doesNotMatch(result.stdout + result.stderr, /hunter2/);
    }
  } finally {
    silent.close();
    await accepting;
    for (const connection of held) connection.close();
  }
});

Deno.test("no mistyped command line prints a password", async () => {
  const secret = "s3cr3t-pw";
  const url = `amqp://user:${secret}@127.0.0.1:5672`;
  const cases: Array<[string, string[], Record<string, string>?]> = [
    ["rpc_client.ts", [url]],
    ["rpc_server.ts", [url]],
    ["rpc_client.ts", [`--url:${url}`, "5"]],
    ["rpc_server.ts", [`--url:${url}`]],
    ["rpc_client.ts", [`--url=user:${secret}@localhost`, "5"]],
    ["rpc_client.ts", ["--url", `user:${secret}@localhost`, "5"]],
    ["rpc_server.ts", ["--url", `user:${secret}@localhost`]],
    ["rpc_client.ts", ["--url", `amqp:/user:${secret}@localhost`, "5"]],
    ["rpc_server.ts", ["--url", `amqp:/user:${secret}@localhost`]],
    ["rpc_client.ts", ["5"], { AMQP_URL: `user:${secret}@localhost` }],
    ["rpc_server.ts", [], { AMQP_URL: `amqp:/user:${secret}@localhost` }],
    ["rpc_server.ts", [], { AMQP_URL: `amqp://localhost,user:${secret}@x` }],
    ["rpc_client.ts", ["--timeout", url, "5"]],
    ["rpc_client.ts", ["--reply-queue", url, "5"]],
    ["rpc_client.ts", [
      "--queue",
      "q",
      "--url",
      "amqp://localhost",
      "--url",
      `http://u:${secret}@h`,
      "5",
    ]],
    ["rpc_server.ts", ["--prefetch", url]],
    ["rpc_server.ts", ["--queue-type", url]],
    ["rpc_server.ts", ["--timeout", url]],
    ["rpc_client.ts", ["--url", `amqp://u:${secret}@127.0.0.1:1`, "5"]],
    ["rpc_server.ts", ["--url", `amqp://u:${secret}@127.0.0.1:1`]],
    ["rpc_client.ts", ["--url", `amqp://u:p@ss:${secret}@127.0.0.1:1`, "5"]],
  ];
  const results = await Promise.all(
    cases.map(([script, args, env]) => run(script, args, 20_000, env)),
  );
  for (const [i, { code, stdout, stderr }] of results.entries()) {
    const what = `${cases[i][0]} ${cases[i][1].join(" ")} ${JSON.stringify(cases[i][2] ?? {})}`;
    assert.notEqual(code, 0, what);
    assert.doesNotMatch(stdout + stderr, new RegExp(secret), what);
    assert.equal(stderr.trimEnd().split("\n").length, 1, `${what}: ${stderr}`);
  }
});
