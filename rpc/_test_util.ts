/**
 * Fixtures shared by the rpc/ tests: a broker connection of the test's own
 * with fresh queues, a server and client pair, handlers that hold or slow
 * requests, the command lines run as a user runs them, rabbitmqctl, TCP
 * proxies that cut or count, and the helpers of the cluster test.
 *
 * Every test runs against a real RabbitMQ broker (`$AMQP_URL`, else
 * amqp://localhost), on queues of its own (`rpc_test.<uuid>`) that it
 * deletes, so it never meets another test or a running server.
 *
 * @module
 */
import assert from "node:assert/strict";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel, ChannelModel, Message } from "npm:amqplib@^2.3.1";
import {
  fib,
  type FibonacciClientOptions,
  FibonacciRpcClient,
  FibonacciRpcServer,
  type FibonacciServerOptions,
  RpcError,
} from "./mod.ts";

/** The broker every test uses: `$AMQP_URL`, else amqp://localhost. */
export const BROKER_URL = Deno.env.get("AMQP_URL") ?? "amqp://localhost";

/** The repository's root: the working directory of every program the tests run. */
export const ROOT = new URL("..", import.meta.url);

/** Server options that silence its log. */
export const quiet = { log: null };

/** Resolves after `ms`: for polling, and for tests about time passing (each says why). */
export const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `condition` holds; fails the test after `timeout` ms. */
export async function waitFor(
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

/** A URL as the programs print it: its password replaced by `***`. */
export function shown(url: string) {
  const copy = new URL(url);
  if (copy.password) copy.password = "***";
  return copy.href;
}

/** The tests' broker URL with `password` (and user guest, unless it names one) in it. */
export function withPassword(password: string) {
  const url = new URL(BROKER_URL);
  url.username ||= "guest";
  url.password = password;
  return url.href;
}

/** The tests' broker URL with its password written out: its own, else guest's. */
export const URL_WITH_PASSWORD = new URL(BROKER_URL).password ? BROKER_URL : withPassword("guest");

/** A fresh queue name of the tests' own. */
export const testQueue = () => `rpc_test.${crypto.randomUUID()}`;

/** A broker connection of the test's own, naming fresh queues; disposing it deletes them all. */
export async function openBroker() {
  const connection: ChannelModel = await amqp.connect(BROKER_URL);
  const channel: Channel = await connection.createChannel();
  channel.on("error", () => {});
  const queues: string[] = [];
  const newQueue = () => {
    const queue = testQueue();
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
    /** How many consumers a queue has. */
    async consumerCount(queue: string) {
      return (await withChannel((own) => own.checkQueue(queue))).consumerCount;
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

/** What {@linkcode openBroker} gives. */
export type Broker = Awaited<ReturnType<typeof openBroker>>;

/** A queue of the test's own with a server (quiet unless `log` is given) and a client on it. */
export async function startPair(
  serverOptions: Omit<FibonacciServerOptions, "queue"> = {},
  clientOptions: Omit<FibonacciClientOptions, "queue"> = {},
) {
  const broker = await openBroker();
  try {
    const server = await FibonacciRpcServer.start({
      url: BROKER_URL,
      queue: broker.queue,
      ...quiet,
      ...serverOptions,
    });
    const client = await FibonacciRpcClient.connect({
      url: BROKER_URL,
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
export function heldHandler() {
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
export function slowHandler(ms: number, seen: number[] = []) {
  return async (n: number) => {
    seen.push(n);
    await delay(ms);
    return fib(n);
  };
}

/** What a program printed, and how it ended. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `program args` in the repository's root to its end, with a deadline. */
export async function runCommand(
  program: string,
  args: string[],
  timeout = 20_000,
  env?: Record<string, string>,
): Promise<RunResult> {
  const output = await new Deno.Command(program, {
    args,
    cwd: ROOT,
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

/** Runs `deno args` in the repository's root to its end, with a deadline. */
export function runDeno(args: string[], timeout = 20_000, env?: Record<string, string>) {
  return runCommand(Deno.execPath(), args, timeout, env);
}

/** The command-line server, as run from the repository's root. */
export const FIB_SERVER = "rpc/fib_server.ts";

/** The command-line client, as run from the repository's root. */
export const FIB_CLIENT = "rpc/fib_client.ts";

/** The prefix a program's messages start with: `fib_server` for rpc/fib_server.ts. */
export const programName = (script: string) => script.replace(/^.*\//, "").replace(/\.ts$/, "");

/** Runs a program (`rpc/fib_client.ts`, say) as a user would (`deno run -A`), with a deadline. */
export function run(
  script: string,
  args: string[],
  timeout = 20_000,
  env?: Record<string, string>,
) {
  return runDeno(["run", "-A", script, ...args], timeout, env);
}

/** Starts a program in the background; disposing it kills it if still running. */
export function spawn(script: string, args: string[]) {
  return spawnDeno(["run", "-A", script, ...args]);
}

/** Runs `deno` with these arguments in the background, as {@linkcode spawnCommand} does. */
export function spawnDeno(args: string[], options?: SpawnOptions) {
  return spawnCommand(Deno.execPath(), args, options);
}

/** Options of {@linkcode spawnCommand}. */
export interface SpawnOptions {
  env?: Record<string, string>;
  /** "piped" to write() to it; default "null". */
  stdin?: "null" | "piped";
  /** What disposal sends it if it still runs (SIGKILL 5 s later if that does not end it); default SIGKILL. */
  disposeSignal?: Deno.Signal;
}

/**
 * Runs `program args` in the repository's root in the background,
 * collecting its output. `stop()` signals it (SIGKILL 5 s later if it still
 * runs) and waits for it; disposing it stops it with `disposeSignal`.
 */
export function spawnCommand(
  program: string,
  args: string[],
  { env, stdin = "null", disposeSignal = "SIGKILL" }: SpawnOptions = {},
) {
  const child = new Deno.Command(program, {
    args,
    cwd: ROOT,
    env,
    stdin,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const input = stdin === "piped" ? child.stdin.getWriter() : undefined;
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
  async function stop(signal: Deno.Signal = "SIGTERM") {
    await input?.close().catch(() => {});
    if (!exited) {
      child.kill(signal);
      const killer = setTimeout(() => exited || child.kill("SIGKILL"), 5_000);
      await status.finally(() => clearTimeout(killer));
    }
    return await status;
  }
  return {
    child,
    status,
    stop,
    get exited() {
      return exited;
    },
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    /** Writes `text` to its standard input (only with `stdin: "piped"`). */
    async write(text: string) {
      assert.ok(input, "spawned without stdin: piped");
      await input.write(new TextEncoder().encode(text));
    },
    [Symbol.asyncDispose]: async () => void await stop(disposeSignal),
  };
}

/** What {@linkcode spawnCommand} gives. */
export type Spawned = ReturnType<typeof spawnCommand>;

/** Runs `rabbitmqctl args` (1 to 4 s a call here) and returns its output; throws, saying why, if it fails. */
export async function rabbitmqctl(args: string[], timeout = 20_000) {
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
export async function closeFromBroker(connectionName: string) {
  const pid = await connectionPid(connectionName);
  assert.ok(pid, `no broker connection named "${connectionName}"`);
  await rabbitmqctl(["close_connection", pid, "closed by rpc_test"]);
}

/** Why rabbitmqctl cannot close our connections (a broker in Docker, say), or undefined. */
async function rabbitmqctlProblem(): Promise<string | undefined> {
  // It works if it lists a connection of ours: then it reaches the broker we use.
  const connectionName = `rpc_test probe ${crypto.randomUUID().slice(0, 8)}`;
  const clientProperties = { connection_name: connectionName };
  const connection = await amqp.connect(BROKER_URL, { clientProperties }).catch(() => undefined);
  if (!connection) return `no broker at ${shown(BROKER_URL)}`;
  try {
    const pid = await connectionPid(connectionName, 15_000);
    return pid ? undefined : "it does not list our connection";
  } catch (error) {
    return (error as Error).message;
  } finally {
    await connection.close();
  }
}

/**
 * Options for the tests that close connections from the broker side (with
 * rabbitmqctl): ignored, saying why, when rabbitmqctl cannot reach the
 * broker. Probes (about 1 s); a test module awaits it once, at load.
 */
export async function fromBrokerSide(): Promise<{ ignore: boolean }> {
  const problem = await rabbitmqctlProblem();
  if (problem !== undefined) {
    console.error(
      `rabbitmqctl cannot reach the broker (${problem}): ` +
        "skipping the tests that close connections from the broker side",
    );
  }
  return { ignore: problem !== undefined };
}

/** Debian's python3, where python3-pika installs: it runs our Python peers (interop/). */
export const PYTHON = "/usr/bin/python3";

/** Whether python3-pika is installed (for the tests that run interop/*.py). */
export function pikaInstalled(): Promise<boolean> {
  return new Deno.Command(PYTHON, {
    args: ["-c", "import pika"],
    stdout: "null",
    stderr: "null",
  }).output().then((output) => output.success, () => false);
}

/**
 * A TCP listener on a free loopback port that accepts connections and never
 * answers: a port that does not speak AMQP. Disposing it closes it and them.
 */
export function silentListener() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const connection of listener) accepted.push(connection); // accept, never answer
  })();
  return {
    port: listener.addr.port,
    /** How many connections it has accepted so far. */
    get accepted() {
      return accepted.length;
    },
    [Symbol.asyncDispose]: async () => {
      listener.close();
      await accepting;
      for (const connection of accepted) connection.close();
    },
  };
}

/**
 * A TCP proxy of the test's own between a program and the broker. `cut()`
 * closes every link at once, with no AMQP close: to the program, the broker
 * has vanished, as when a host dies or a NAT forgets the connection.
 * `restore()` listens again on the same port.
 */
export function startProxy() {
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
 * writes to finish, and merge them.) It prints each size before it passes
 * the bytes on, and echoes what `sync()` writes to its stdin: once the echo
 * is back, `reads` holds every read made before.
 */
export async function startCountingProxy() {
  const code = `
    (async () => {
      for await (const chunk of Deno.stdin.readable) Deno.stdout.writeSync(chunk);
    })();
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
  const proxy = spawnDeno(["eval", code], { stdin: "piped" });
  const lines = () => proxy.stdout.split("\n").slice(0, -1); // whole lines only
  await waitFor("the counting proxy to listen", () => lines().length > 0);
  let syncs = 0;
  return {
    url: `amqp://guest:guest@127.0.0.1:${lines()[0]}`,
    /** The sizes of the reads so far, from the client's side. */
    get reads() {
      return lines().slice(1).filter((line) => /^\d+$/.test(line)).map(Number);
    },
    /** Waits until `reads` holds every read the proxy made before this call. */
    async sync() {
      const marker = `sync ${++syncs}`;
      await proxy.write(`${marker}\n`);
      await waitFor("the counting proxy to echo", () => lines().includes(marker));
    },
    [Symbol.asyncDispose]: () => proxy[Symbol.asyncDispose](),
  };
}

// ─── The cluster (.ci/cluster.sh) ───────────────────────────────────────────

/** The AMQP URLs of the test cluster's three nodes (.ci/cluster.sh). */
export const CLUSTER_URLS = [5681, 5682, 5683].map((port) =>
  `amqp://guest:guest@127.0.0.1:${port}`
);

/** Runs .ci/cluster.sh (never `start`: the tests use a cluster started before them); returns its last line of output. */
export async function cluster(...args: string[]): Promise<string> {
  const output = await new Deno.Command("bash", {
    args: [".ci/cluster.sh", ...args],
    cwd: ROOT,
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

/** Whether something listens on 127.0.0.1:`port`. */
export async function listening(port: number): Promise<boolean> {
  try {
    const connection = await Deno.connect({ hostname: "127.0.0.1", port });
    connection.close();
    return true;
  } catch {
    return false;
  }
}

/**
 * The options of a test that needs the test cluster: ignored where none
 * runs (saying so once, for `file`), unless `$CI` is set: there a missing
 * cluster fails the test.
 */
export async function clusterTests(file: string): Promise<{ ignore: boolean }> {
  const ignore = !(await listening(Number(new URL(CLUSTER_URLS[0]).port))) && !Deno.env.has("CI");
  if (ignore) {
    console.error(
      `${file}: skipping the cluster tests: no test cluster on 127.0.0.1:5681-5683 ` +
        "(start one with: deno task cluster; it needs root and rabbitmq-server)",
    );
  }
  return { ignore };
}

/** Deletes a queue through the first node that answers. */
export async function deleteQueue(urls: string[], queue: string): Promise<void> {
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

/** What {@linkcode load} counted. */
export interface LoadResult {
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
export async function load(
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
