/**
 * Tests of the command lines rpc/fib_server.ts and rpc/fib_client.ts, run
 * as a user runs them (`deno run -A`, from the repository's root), end to
 * end against a real broker: answers, bad input, --help, what the client says
 * when nobody answers or the broker vanishes, SIGINT and SIGTERM.
 *
 * Run: `deno test -A rpc/fib_cli_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FibonacciRpcServer } from "./mod.ts";
import { silentListener, startProxy } from "./_test_faults.ts";
import { FIB_CLIENT, FIB_SERVER, programName, run, runDeno, spawn } from "./_test_process.ts";
import { BROKER_URL, heldHandler, openBroker, quiet, waitFor } from "./_test_util.ts";

Deno.test("the command-line pair works end to end, and the server exits 0 on SIGTERM", async () => {
  await using broker = await openBroker();
  await using server = spawn(FIB_SERVER, ["--url", BROKER_URL, "--queue", broker.queue]);
  await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
  const client = await run(FIB_CLIENT, [
    "--url",
    BROKER_URL,
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
  const verbose = await run(FIB_CLIENT, [
    ...["--url", BROKER_URL, "--queue", broker.queue],
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
      " [x] SIGTERM: finishing the request in progress (the others go back to the queue), then exiting\n",
  );
  assert.equal(server.stderr, "");
});

/** Command lines the programs refuse: program, arguments, and the one line it prints. */
const BAD_COMMAND_LINES: Array<[string, string[], string]> = [
  [FIB_CLIENT, [], "give at least one number, e.g. fib_client.ts 30"],
  [FIB_CLIENT, ["abc"], 'n must be a non-negative integer, got "abc"'],
  [FIB_CLIENT, ["--", "-5"], 'n must be a non-negative integer, got "-5"'],
  [FIB_CLIENT, ["1.5"], 'n must be a non-negative integer, got "1.5"'],
  [
    FIB_CLIENT,
    ["99999999999999999999"],
    "n is too large: 99999999999999999999 (the server computes fib(n) up to n = 10000)",
  ],
  [
    FIB_CLIENT,
    ["--timeout", "0", "1"],
    '--timeout must be a positive whole number of ms, got "0"',
  ],
  [
    FIB_CLIENT,
    ["--timeout", "soon", "1"],
    '--timeout must be a positive whole number of ms, got "soon"',
  ],
  [
    FIB_CLIENT,
    ["--reply-queue", "mine", "1"],
    '--reply-queue must be "exclusive" or "direct", got "mine"',
  ],
  [FIB_CLIENT, ["--queue", "", "1"], "--queue must not be empty"],
  [FIB_CLIENT, ["--bogus", "1"], "Unknown option '--bogus'"],
  [
    FIB_CLIENT,
    ["--url", "http://x", "1"],
    '--url must be an amqp:// or amqps:// URL with a host, got "http://x"',
  ],
  [
    FIB_CLIENT,
    ["--url", "amqp://:5672", "1"],
    '--url must be an amqp:// or amqps:// URL with a host, got "amqp://:5672"',
  ],
  [
    FIB_CLIENT,
    ["--url", BROKER_URL, "--url", "amqps//host", "1"],
    '--url (entry 2 of 2) must be an amqp:// or amqps:// URL with a host, got "amqps//host"',
  ],
  [
    FIB_CLIENT,
    ["--url", "", "1"],
    "--url must list one or more amqp:// URLs, separated by commas",
  ],
  [
    FIB_SERVER,
    ["--url", "amqp://localhost:99999"],
    '--url must be an amqp:// or amqps:// URL with a host, got "amqp://localhost:99999"',
  ],
  [
    FIB_SERVER,
    ["--prefetch", "0"],
    '--prefetch must be an integer from 1 to 65535, got "0"',
  ],
  [
    FIB_SERVER,
    ["--prefetch", "70000"],
    '--prefetch must be an integer from 1 to 65535, got "70000"',
  ],
  [
    FIB_SERVER,
    ["--prefetch", "ten"],
    '--prefetch must be an integer from 1 to 65535, got "ten"',
  ],
  [
    FIB_SERVER,
    ["--queue-type", "stream"],
    '--queue-type must be "quorum" or "classic", got "stream"',
  ],
  [FIB_SERVER, ["--queue", ""], "--queue must not be empty"],
  [FIB_SERVER, ["--queue"], "Option '--queue <value>' argument missing"],
  [FIB_SERVER, ["--verbose"], "Unknown option '--verbose'"],
];

Deno.test("bad command-line input exits 2 with a one-line message", async () => {
  const cases = BAD_COMMAND_LINES;
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
      stderr: `${programName(script)}: ${message} (see --help)\n`, // one line
    })),
  );
});

Deno.test("the command lines need only --allow-net and --allow-env, scoped to the broker, and name a permission they lack", async () => {
  await using broker = await openBroker();
  await using _server = await FibonacciRpcServer.start({ queue: broker.queue, ...quiet });
  const url = new URL(BROKER_URL);
  const address = `${url.hostname}:${url.port || 5672}`;
  const scoped = [`--allow-net=${address}`, "--allow-env=AMQP_URL"];
  const [enough, noNet, noRead] = await Promise.all([
    runDeno(["run", ...scoped, FIB_CLIENT, "--url", BROKER_URL, "--queue", broker.queue, "9"]),
    runDeno(["run", "--allow-env", FIB_CLIENT, "--url", BROKER_URL, "9"]),
    runDeno(["run", ...scoped, FIB_SERVER, "--url", "amqps://broker", "--cacert", "ca.pem"]),
  ]);
  assert.equal(enough.stdout, " [x] Requesting fib(9)\n [.] Got 34\n", enough.stderr);
  assert.equal(noNet.code, 1);
  assert.match(
    noNet.stderr,
    new RegExp(
      `^fib_client: not allowed to connect to .*: run with --allow-net=${address} ` +
        `\\(or --allow-net\\)\n$`,
    ),
  );
  assert.equal(noRead.code, 2);
  assert.equal(
    noRead.stderr,
    'fib_server: cannot read --cacert "ca.pem": not allowed to read it: run with ' +
      "--allow-read=ca.pem (see --help)\n",
  );
});

Deno.test("--help prints the usage and exits 0", async () => {
  const outputs = await Promise.all(
    [FIB_CLIENT, FIB_SERVER].map((script) => run(script, ["--help"])),
  );
  for (const [i, script] of [FIB_CLIENT, FIB_SERVER].entries()) {
    const { code, stdout, stderr } = outputs[i];
    assert.equal(code, 0);
    assert.equal(stderr, "");
    assert.ok(
      stdout.startsWith(`Usage: deno run --allow-net --allow-env ${script} [options]`),
      stdout,
    );
    assert.match(stdout, /--url URL/);
    assert.match(stdout, /--cacert FILE/);
    assert.match(stdout, /--allow-net=broker:5671/);
  }
});

Deno.test("the command-line client says so when no server consumes the queue, or there is no queue", async () => {
  await using broker = await openBroker();
  await broker.channel.assertQueue(broker.queue);
  const queue = broker.newQueue();
  const [client, missing] = await Promise.all([
    run(FIB_CLIENT, ["--queue", broker.queue, "--timeout", "1500", "7"]),
    run(FIB_CLIENT, ["--queue", queue, "7"]),
  ]);
  assert.equal(client.code, 1);
  assert.equal(client.stdout, " [x] Requesting fib(7)\n");
  // The request expires at its deadline, so the look at the queue may or may not still see it.
  assert.match(
    client.stderr,
    new RegExp(
      `^ \\[!\\] No server is consuming "${broker.queue}"; waiting up to 1500 ms for one ` +
        `\\(start it: deno run --allow-net --allow-env rpc/fib_server\\.ts\\)\n` +
        `fib_client: fib\\(7\\): no reply within 1500 ms: no server consumes "${broker.queue}" ` +
        `\\((0 requests|1 request) waiting in it; start one\\)\n$`,
    ),
  );
  assert.equal(missing.code, 1);
  assert.equal(
    missing.stderr,
    `fib_client: fib(7): no queue named "${queue}": is the server running?\n`,
  );
});

Deno.test("SIGINT stops the command-line server and client cleanly", async () => {
  await using broker = await openBroker();
  await using server = spawn(FIB_SERVER, ["--queue", broker.queue]);
  await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
  server.child.kill("SIGINT");
  assert.equal((await server.status).code, 0);
  assert.equal(
    server.stdout,
    " [x] Awaiting RPC requests\n [x] SIGINT: finishing the request in progress (the others go back to the queue), then exiting\n",
  );

  // Now the queue has no consumer: the client waits, and SIGINT ends the wait.
  await using client = spawn(FIB_CLIENT, ["--queue", broker.queue, "5"]);
  await waitFor("the client to wait", () => client.stderr.includes("No server is consuming"));
  client.child.kill("SIGINT");
  assert.equal((await client.status).code, 130);
  assert.match(client.stderr, /\nfib_client: interrupted; closing the connection\n$/);
  assert.doesNotMatch(client.stderr, /error:|at /);
});

Deno.test("SIGINT while the command-line server is still connecting ends it at once, cleanly", async () => {
  // A listener that accepts and never answers keeps the server connecting for 10 s.
  await using silent = silentListener();
  const url = `amqp://127.0.0.1:${silent.port}`;
  await using server = spawn(FIB_SERVER, ["--url", url, "--queue", "rpc_test.never"]);
  await waitFor("the server to connect", () => silent.accepted === 1);
  const started = performance.now();
  server.child.kill("SIGINT");
  assert.equal((await server.status).code, 0);
  assert.ok(performance.now() - started < 3_000, "exited at once, not after the 10 s connect");
  assert.match(server.stdout, /^ \[x\] SIGINT: /);
  assert.equal(server.stderr, "");
});

Deno.test("the command-line client says in one line that the broker vanished, and exits 1", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  // The request is held until the client has ended; then the server can close.
  const held = heldHandler();
  await using _server = await FibonacciRpcServer.start({
    url: BROKER_URL,
    queue: broker.queue,
    handler: held.handler,
    ...quiet,
  });
  using _held = held; // released first, whatever happens, so that the server can close
  const client = run(FIB_CLIENT, ["--url", proxy.url, "--queue", broker.queue, "20"]);
  await waitFor("the request to reach the server", () => held.seen.length === 1);
  proxy.cut();
  const { code, stdout, stderr } = await client;
  assert.equal(code, 1);
  assert.equal(stdout, " [x] Requesting fib(20)\n");
  assert.equal(stderr, "fib_client: fib(20): lost the connection to the broker\n");
});
