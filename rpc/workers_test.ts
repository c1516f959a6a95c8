/**
 * Tests of WorkerPool (rpc/workers.ts): a handler that computes for 20 s
 * without yielding, in a worker, behind a real server, whose connection
 * keeps its heartbeats; runaway handlers terminated and replaced; calls
 * spread over the workers; odd throws and crashing workers; the context
 * in the worker. The handler modules are rpc/_test_worker_handler.ts and
 * rpc/_test_worker_broken.ts.
 *
 * Run: `deno test -A rpc/workers_test.ts` (about 40 s: the first test
 * computes for 20 s). Comparing broker connection pids needs `rabbitmqctl`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { BadRequestError, type Handler, RpcClient, RpcError, WorkerPool } from "./mod.ts";
import { rabbitmqctl } from "./_test_faults.ts";
import {
  type Broker,
  BROKER_URL,
  delay,
  openBroker,
  startLoggedServer,
  waitFor,
} from "./_test_util.ts";

const HANDLER = new URL("./_test_worker_handler.ts", import.meta.url);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const text = (reply: Uint8Array | string) =>
  typeof reply === "string" ? reply : decoder.decode(reply);

/** A pool of `workers` on the test handler module, silent unless `logged` is given. */
function startPool(workers: number, options: { abortGrace?: number; logged?: string[] } = {}) {
  const { abortGrace, logged } = options;
  return WorkerPool.start(HANDLER, {
    workers,
    abortGrace,
    log: logged ? (line) => logged.push(line) : null,
  });
}

/** Runs one request in the pool, with a context of the test's own. */
function run(pool: WorkerPool, request: string, signal?: AbortSignal) {
  return pool.handler(encoder.encode(request), { signal });
}

/** A server on a fresh queue of `broker`'s running `handler`, its log kept, and a client. */
async function startServer(broker: Broker, handler: Handler) {
  const server = await startLoggedServer(broker, handler);
  const logged = server.logged;
  const client = await RpcClient.connect({ url: BROKER_URL, timeout: 60_000 });
  return {
    server,
    client,
    logged,
    async [Symbol.asyncDispose]() {
      await client.close();
      await server.close();
    },
  };
}

/** The broker's pid for the connection named `name` (rabbitmqctl), or undefined without rabbitmqctl. */
async function connectionPid(name: string): Promise<string | undefined> {
  const list = await rabbitmqctl(
    ["list_connections", "--quiet", "--no-table-headers", "pid", "client_properties"],
  ).catch(() => undefined);
  return list?.split("\n").find((line) => line.includes(`{"connection_name","${name}"}`))
    ?.split("\t")[0];
}

Deno.test("a handler that computes for 20 s without yielding, in a worker, answers its caller and the server keeps its connection", async () => {
  await using broker = await openBroker();
  await using pool = await startPool(1);
  let calls = 0;
  await using pair = await startServer(broker, (request, context) => {
    calls++;
    return pool.handler(request, context);
  });
  const { server, client, logged } = pair;
  const pidBefore = await connectionPid(server.connectionName);
  const started = Date.now();
  // Heartbeats are 5 s: on the event loop, the broker would drop the connection after ~10 s.
  const reply = text(await client.call(server.queue, "spin 20000"));
  const [, start, end] = reply.split(" ").map(Number);
  assert.ok(end - start >= 20_000, reply);
  assert.ok(Date.now() - started >= 20_000);
  assert.equal(calls, 1, "computed once: the request was never redelivered");
  assert.deepEqual(logged.filter((line) => line.startsWith(" [!]")), [], logged.join("\n"));
  if (pidBefore) assert.equal(await connectionPid(server.connectionName), pidBefore);
  assert.equal(server.answered, 1);
});

/** This process's worker threads, on Linux (where each is a thread named `worker-N`). */
function workerThreads(): number {
  return [...Deno.readDirSync("/proc/self/task")]
    .filter((task) =>
      Deno.readTextFileSync(`/proc/self/task/${task.name}/comm`).startsWith("worker")
    )
    .length;
}

Deno.test("a handler that does not yield when its caller's signal aborts loses its worker, and a new worker answers the next call", async () => {
  const logged: string[] = [];
  await using pool = await startPool(1, { abortGrace: 500, logged });
  const controller = new AbortController();
  const reason = new Error("the caller gave up");
  // 4 s without yielding, and no deadline: nothing can stop it (Deno 2.9's terminate() cannot).
  const running = run(pool, "spin 4000", controller.signal);
  await delay(300); // the worker is spinning by now
  controller.abort(reason);
  await assert.rejects(running, (error) => error === reason);
  await waitFor("the worker replaced", () => pool.replaced === 1);
  assert.match(text(await run(pool, "hello")), /^worker \w+$/);
  if (Deno.build.os === "linux") {
    await waitFor(
      "the abandoned thread gone, once its handler returns",
      () => workerThreads() === 1,
    );
  }
  assert.deepEqual(logged, [
    " [!] A handler's worker stopped (its handler did not return within 500 ms of being aborted); starting another",
  ]);
});

Deno.test("a handler that never yields is stopped past its caller's deadline, in its worker, which answers the next call", async () => {
  await using pool = await startPool(1, { abortGrace: 1_000 });
  const first = text(await run(pool, "hello"));
  const started = Date.now();
  const context = { deadline: Date.now() + 500, signal: AbortSignal.timeout(500) };
  await assert.rejects(pool.handler(encoder.encode("spin-forever"), context), {
    name: "TimeoutError",
  });
  assert.ok(Date.now() - started < 5_000);
  // The caller is answered at its deadline; V8 stops the loop abortGrace / 2 later.
  assert.equal(text(await run(pool, "hello")), first, "the same worker");
  assert.equal(pool.replaced, 0);
  if (Deno.build.os === "linux") assert.equal(workerThreads(), 1, "no thread left spinning");
  // Without a signal, the worker's own stop says why.
  await assert.rejects(
    pool.handler(encoder.encode("spin-forever"), { deadline: Date.now() + 200 }),
    {
      name: "TimeoutError",
      message: "the handler computed for 700 ms without yielding, past its time: stopped",
    },
  );
});

Deno.test("timeLimit stops a handler that computes too long without yielding, and the worker goes on", async () => {
  await using pool = await WorkerPool.start(HANDLER, { workers: 1, timeLimit: 300, log: null });
  await assert.rejects(run(pool, "spin-forever"), {
    name: "TimeoutError",
    message: "the handler computed for 300 ms without yielding, past its time: stopped",
  });
  assert.match(text(await run(pool, "spin 100")), /^\w+ \d+ \d+$/);
  assert.equal(pool.replaced, 0);
});

Deno.test("a handler that passes its signal on stops when its caller's aborts, and keeps its worker", async () => {
  await using pool = await startPool(1, { abortGrace: 300 });
  const first = text(await run(pool, "hello"));
  const controller = new AbortController();
  const waiting = run(pool, "wait-for-abort", controller.signal);
  await delay(100);
  controller.abort();
  await assert.rejects(waiting, { name: "AbortError" });
  await delay(1_000); // past abortGrace: a worker that had not stopped would be replaced by now
  assert.equal(pool.replaced, 0);
  assert.equal(text(await run(pool, "hello")), first, "the same worker");
});

Deno.test("a call waiting for a busy worker is dropped when its signal aborts, and never runs", async () => {
  await using pool = await startPool(1);
  const busy = run(pool, "spin 1000");
  const controller = new AbortController();
  const queued = run(pool, "crash", controller.signal); // it would cost the worker, if it ran
  assert.equal(pool.queued, 1);
  controller.abort(new Error("gave up in the queue"));
  await assert.rejects(queued, { message: "gave up in the queue" });
  assert.equal(pool.queued, 0);
  await busy;
  assert.match(text(await run(pool, "hello")), /^worker /);
  assert.equal(pool.replaced, 0);
});

Deno.test("calls at once spread over every worker, one call at a time in each", async () => {
  await using pool = await startPool(2);
  const calls = Array.from({ length: 6 }, () => run(pool, "spin 300"));
  assert.equal(pool.queued, 4, "two calls running, four waiting");
  const runs = (await Promise.all(calls)).map((reply) => {
    const [worker, start, end] = text(reply).split(" ");
    return { worker, start: Number(start), end: Number(end) };
  });
  const workers = new Set(runs.map((each) => each.worker));
  assert.equal(workers.size, 2, JSON.stringify(runs));
  const overlap = (a: typeof runs[0], b: typeof runs[0]) => a.start < b.end && b.start < a.end;
  for (const [i, a] of runs.entries()) {
    for (const b of runs.slice(i + 1)) {
      if (a.worker === b.worker) {
        assert.ok(!overlap(a, b), `one at a time: ${JSON.stringify(runs)}`);
      }
    }
  }
  assert.ok(overlap(runs[0], runs[1]), `two at once: ${JSON.stringify(runs)}`);
});

Deno.test("whatever a handler throws comes back as an Error with a clear message", async () => {
  await using pool = await startPool(1);
  const thrown = async (kind: string) => {
    const error = await run(pool, `throw ${kind}`).then(() => undefined, (error) => error);
    assert.ok(error instanceof Error, kind);
    assert.ok(!error.message.includes("\n"), error.message);
    return error;
  };
  for (
    const [kind, what] of [
      ["null-prototype", "an object without a prototype"],
      ["string", '"a string"'],
      ["symbol", "Symbol(odd)"],
      ["function", "a function"],
    ]
  ) {
    const error = await thrown(kind);
    assert.equal(
      `${error.name}: ${error.message}`,
      `Error: the handler threw ${what}, not an Error`,
    );
  }
  const typeError = await thrown("type-error");
  assert.equal(`${typeError.name}: ${typeError.message}`, "TypeError: bad type");
  const rpc = await thrown("rpc");
  assert.ok(rpc instanceof RpcError);
  assert.equal(`${rpc.code}: ${rpc.message}`, "my-code: refused on purpose");
  assert.ok(await thrown("bad-request") instanceof BadRequestError);
  await assert.rejects(run(pool, "return-object"), {
    name: "TypeError",
    message: "the handler returned an object ([object Object]), not a reply (bytes or text)",
  });
  assert.equal(pool.replaced, 0, "a throw costs no worker");
});

Deno.test("odd throws behind a server get error replies, and the server goes on", async () => {
  await using broker = await openBroker();
  await using pool = await startPool(1);
  await using pair = await startServer(broker, pool.handler);
  const { server, client } = pair;
  for (const kind of ["null-prototype", "symbol", "function", "string"]) {
    await assert.rejects(client.call(server.queue, `throw ${kind}`), RpcError, kind);
  }
  assert.match(text(await client.call(server.queue, "hello")), /^worker /);
  assert.equal(server.answered, 5);
});

Deno.test("a worker that dies is replaced, and its call fails with one line", async () => {
  await using pool = await startPool(1, { logged: [] });
  const reasons = {
    crash: "uncaught Error: crashed on purpose",
    close: "its worker exited (code 0)",
    exit: "its worker exited (code 1)",
  };
  for (const [request, reason] of Object.entries(reasons)) {
    await assert.rejects(run(pool, request), {
      message: `the worker running the handler stopped: ${reason}; a new worker takes its place`,
    });
    assert.match(text(await run(pool, "hello")), /^worker /, `answered after ${request}`);
  }
  assert.equal(pool.replaced, 3);
});

Deno.test("start() fails with one line for a module that is missing, throws as it loads, or exports no handler", async () => {
  const missing = new URL("./_test_worker_missing.ts", import.meta.url);
  const broken = new URL("./_test_worker_broken.ts", import.meta.url);
  const noHandler = "data:text/javascript,export const answer = 42;";
  const cases: Array<[URL | string, string]> = [
    [missing, `Module not found "${missing.href}".`],
    [broken, "broken on purpose at load"],
    [noHandler, "it exports no default function and no function named handler"],
  ];
  for (const [module, why] of cases) {
    const href = module instanceof URL ? module.href : module;
    await assert.rejects(WorkerPool.start(module, { workers: 2 }), {
      message: `could not load the handler module ${href}: ${why}`,
    });
  }
  await assert.rejects(WorkerPool.start(HANDLER, { workers: 0 }), RangeError);
  await assert.rejects(WorkerPool.start(HANDLER, { timeLimit: 0 }), RangeError);
});

Deno.test("the context reaches the worker, with a signal of its own; the request's bytes arrive exactly", async () => {
  await using pool = await startPool(1);
  const context = {
    queue: "q",
    correlationId: "c-1",
    headers: { "x-a": 1, nested: { list: [1, "two"] }, bytes: Buffer.from("hi") },
    userId: "guest",
    redelivered: true,
    deadline: Date.now() + 5_000,
  };
  const reply = JSON.parse(text(await pool.handler(encoder.encode("context"), context)));
  assert.deepEqual(reply, {
    ...context,
    headers: { ...context.headers, bytes: { 0: 104, 1: 105 } }, // a Uint8Array, in JSON
    signal: true,
  });
  // A view into a larger buffer, as amqplib hands requests over: it must stay usable.
  const whole = encoder.encode("....echo bytes....");
  const view = whole.subarray(4, 14);
  assert.equal(text(await pool.handler(view)), "echo bytes");
  assert.equal(decoder.decode(view), "echo bytes", "the caller's bytes are not detached");
});

Deno.test("behind a server, the worker gets the request's queue, correlation id, headers and user", async () => {
  await using broker = await openBroker();
  await using pool = await startPool(1);
  await using pair = await startServer(broker, pool.handler);
  const { server } = pair;
  const { queue: replyTo, replies } = await broker.replyQueue();
  broker.channel.sendToQueue(server.queue, Buffer.from("context"), {
    replyTo,
    correlationId: "c-42",
    userId: new URL(BROKER_URL).username || "guest",
    headers: { "x-tenant": "acme" },
  });
  await waitFor("the reply", () => replies.length === 1);
  const context = JSON.parse(replies[0].content.toString());
  assert.equal(context.queue, server.queue);
  assert.equal(context.correlationId, "c-42");
  assert.equal(context.headers["x-tenant"], "acme");
  assert.equal(context.userId, new URL(BROKER_URL).username || "guest");
  assert.equal(context.redelivered, false);
  assert.equal(context.signal, true);
});
