/**
 * Tests of how the Fibonacci server and client reach the broker: broker URLs
 * (one, several, bad ones), passwords never shown, brokers that refuse, do
 * not exist, or never speak AMQP, and a broker that vanishes mid-call (a TCP
 * proxy of the test's own, cut).
 *
 * Run: `deno test -A rpc/_connection_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { fib, FibonacciRpcClient, FibonacciRpcServer, type RpcError } from "./mod.ts";
import { silentListener, startProxy } from "./_test_faults.ts";
import { FIB_CLIENT, FIB_SERVER, programName, run } from "./_test_process.ts";
import {
  BROKER_URL,
  openBroker,
  quiet,
  shown,
  slowHandler,
  URL_WITH_PASSWORD,
  waitFor,
  withPassword,
} from "./_test_util.ts";

Deno.test("a password in a broker URL is never printed", async () => {
  const url = withPassword("hunter2-secret");
  const refusal = `cannot log in to ${shown(url)}: access refused (wrong user name or password?)`;
  await assert.rejects(FibonacciRpcServer.start({ url, ...quiet }), { message: refusal });
  await assert.rejects(FibonacciRpcClient.connect({ url }), { message: refusal });
  const outputs = await Promise.all([
    run(FIB_SERVER, ["--url", url]),
    run(FIB_CLIENT, ["--url", url, "1"]),
    run(FIB_CLIENT, ["--url", "http://u:hunter2-secret@x", "1"]),
    run(FIB_CLIENT, ["--url", url, "amqp://u:hunter2-secret@x"]),
  ]);
  for (const { code, stdout, stderr } of outputs) {
    assert.doesNotMatch(stdout + stderr, /hunter2/);
    assert.equal(stderr.trimEnd().split("\n").length, 1, stderr);
    assert.ok(code === 1 || code === 2, stderr);
  }
  assert.equal(outputs[0].stderr, `fib_server: ${refusal}\n`);
  assert.equal(outputs[1].stderr, `fib_client: ${refusal}\n`);
});

Deno.test("no mistyped command line prints a password", async () => {
  const secret = "s3cr3t-pw";
  const url = `amqp://user:${secret}@127.0.0.1:5672`;
  const cases: Array<[string, string[], Record<string, string>?]> = [
    [FIB_CLIENT, [url]],
    [FIB_SERVER, [url]],
    [FIB_CLIENT, [`--url:${url}`, "5"]],
    [FIB_SERVER, [`--url:${url}`]],
    [FIB_CLIENT, [`--url=user:${secret}@localhost`, "5"]],
    [FIB_CLIENT, ["--url", `user:${secret}@localhost`, "5"]],
    [FIB_SERVER, ["--url", `user:${secret}@localhost`]],
    [FIB_CLIENT, ["--url", `amqp:/user:${secret}@localhost`, "5"]],
    [FIB_SERVER, ["--url", `amqp:/user:${secret}@localhost`]],
    [FIB_CLIENT, ["5"], { AMQP_URL: `user:${secret}@localhost` }],
    [FIB_SERVER, [], { AMQP_URL: `amqp:/user:${secret}@localhost` }],
    [FIB_SERVER, [], { AMQP_URL: `amqp://localhost,user:${secret}@x` }],
    [FIB_CLIENT, ["--timeout", url, "5"]],
    [FIB_CLIENT, ["--reply-queue", url, "5"]],
    [FIB_CLIENT, [
      "--queue",
      "q",
      "--url",
      "amqp://localhost",
      "--url",
      `http://u:${secret}@h`,
      "5",
    ]],
    [FIB_SERVER, ["--prefetch", url]],
    [FIB_SERVER, ["--queue-type", url]],
    [FIB_SERVER, ["--timeout", url]],
    [FIB_CLIENT, ["--url", `amqp://u:${secret}@127.0.0.1:1`, "5"]],
    [FIB_SERVER, ["--url", `amqp://u:${secret}@127.0.0.1:1`]],
    [FIB_CLIENT, ["--url", `amqp://u:p@ss:${secret}@127.0.0.1:1`, "5"]],
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

Deno.test("a bad AMQP_URL is a usage error naming the bad entry, with the password hidden", async () => {
  const cases: Array<[string, string]> = [
    [
      "http://user:hunter2@localhost",
      'AMQP_URL must be an amqp:// or amqps:// URL with a host, got "http://user:***@localhost/"',
    ],
    [
      `${BROKER_URL},,${BROKER_URL}`,
      "AMQP_URL must list one or more amqp:// URLs, separated by commas",
    ],
    [
      `${BROKER_URL}, amqp://user:hunter2/x@localhost`,
      "AMQP_URL (entry 2 of 2) must be an amqp:// or amqps:// URL with a host " +
      '(in a password, / ? # @ must be percent-encoded), got "amqp://…"',
    ],
  ];
  await Promise.all(
    [FIB_SERVER, FIB_CLIENT].flatMap((script) =>
      cases.map(async ([value, message]) => {
        const args = script === FIB_CLIENT ? ["1"] : [];
        const output = await run(script, args, 20_000, { AMQP_URL: value });
        assert.equal(output.code, 2, `${script} with AMQP_URL=${value}`);
        assert.equal(output.stderr, `${programName(script)}: ${message} (see --help)\n`);
      })
    ),
  );
});

Deno.test("a bad broker URL given to the library throws a TypeError naming it, with the password hidden", async () => {
  const message =
    'the broker URL (entry 2 of 2) must be an amqp:// or amqps:// URL with a host, got "http://u:***@x/"';
  const url = [BROKER_URL, "http://u:hunter2@x"];
  await assert.rejects(FibonacciRpcServer.start({ url, ...quiet }), { name: "TypeError", message });
  await assert.rejects(FibonacciRpcClient.connect({ url }), { name: "TypeError", message });
});

Deno.test("with several broker URLs, the server and the client use the first that answers", async () => {
  await using broker = await openBroker();
  const url = ["amqp://127.0.0.1:1", BROKER_URL]; // nothing listens on port 1
  const serverLog: string[] = [];
  const clientLog: string[] = [];
  await using _server = await FibonacciRpcServer.start({
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
  assert.deepEqual(clientLog, [` [x] Connected to ${shown(BROKER_URL)}`]);
  for (const connection of ["", " (reply connection)"]) {
    const line = ` [x] Connected to ${shown(BROKER_URL)}${connection}`;
    assert.ok(serverLog.includes(line), `${line}, in:\n${serverLog.join("\n")}`);
  }
  assert.ok(serverLog.includes(" [x] Awaiting RPC requests"));
});

Deno.test("a broker that cannot be used is named in one line: refused, unknown host, unknown virtual host", async () => {
  const vhost = new URL(URL_WITH_PASSWORD);
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
  // The command lines start while the library is tried in this process.
  const programs = Promise.all([
    run(FIB_SERVER, ["--url", vhost.href]),
    run(FIB_CLIENT, ["--url", "amqp://127.0.0.1:1", "--url", "amqp://127.0.0.1:2", "1"]),
  ]);
  for (const [url, message] of cases) {
    await assert.rejects(FibonacciRpcServer.start({ url, ...quiet }), { message });
    await assert.rejects(FibonacciRpcClient.connect({ url }), { message });
  }
  const [server, client] = await programs;
  assert.equal(server.code, 1);
  assert.equal(server.stderr, `fib_server: ${cases[2][1]}\n`);
  assert.equal(client.code, 1);
  assert.equal(client.stderr, `fib_client: ${cases[3][1]}\n`);
});

Deno.test("a listener that never speaks AMQP: both programs give up after 10 s with one line naming it", async () => {
  await using silent = silentListener();
  const url = `amqp://guest:hunter2@127.0.0.1:${silent.port}`;
  const started = performance.now();
  const [server, client] = await Promise.all([
    run(FIB_SERVER, ["--url", url], 30_000),
    run(FIB_CLIENT, ["--url", url, "5"], 30_000),
  ]);
  const elapsed = performance.now() - started;
  assert.ok(elapsed > 9_000 && elapsed < 20_000, `gave up after ${elapsed} ms`);
  const expected = `cannot connect to amqp://guest:***@127.0.0.1:${silent.port}: ` +
    "no AMQP answer within 10 s";
  for (const [name, result] of [["fib_server", server], ["fib_client", client]] as const) {
    assert.equal(result.code, 1, name);
    assert.ok(result.stderr.startsWith(`${name}: ${expected}`), result.stderr);
    assert.equal(result.stderr.trimEnd().split("\n").length, 1, result.stderr);
    assert.doesNotMatch(result.stdout + result.stderr, /hunter2/);
  }
});

Deno.test("a broker that vanishes mid-call fails the call with connection-lost, and the client recovers", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  // fib(10) is held until the test has seen its call fail; the rest are answered at once.
  const seen: number[] = [];
  const hold = Promise.withResolvers<void>();
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: async (n) => {
      seen.push(n);
      if (n === 10) await hold.promise;
      return fib(n);
    },
    ...quiet,
  });
  using _hold = { [Symbol.dispose]: () => hold.resolve() }; // released before the server closes
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
  hold.resolve();
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

Deno.test("a server whose broker vanishes mid-request reconnects and the request is answered", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  const seen: number[] = [];
  const logged: string[] = [];
  await using server = await FibonacciRpcServer.start({
    url: proxy.url,
    queue: broker.queue,
    handler: slowHandler(500, seen),
    log: (line) => logged.push(line),
  });
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
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
