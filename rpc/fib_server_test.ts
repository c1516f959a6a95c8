/**
 * Tests of rpc/fib_server.ts's handler options on the command line, run as
 * a user runs it: `--concurrency` and `--handler-timeout` reach the server,
 * and bad values are usage errors. The rest of the command lines:
 * fib_cli_test.ts.
 *
 * Run: `deno test -A rpc/fib_server_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FibonacciRpcClient } from "./mod.ts";
import { FIB_SERVER, run, spawn } from "./_test_process.ts";
import { BROKER_URL, openBroker, waitFor } from "./_test_util.ts";

Deno.test("fib_server.ts runs with --concurrency and --handler-timeout", async () => {
  await using broker = await openBroker();
  const args = ["--url", BROKER_URL, "--queue", broker.queue];
  await using server = spawn(FIB_SERVER, [
    ...args,
    "--concurrency",
    "4",
    "--handler-timeout",
    "5000",
  ]);
  await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const answers = await Promise.all([10, 20, 30].map((n) => client.call(n, { timeout: 5_000 })));
  assert.deepEqual(answers, [55n, 6765n, 832040n]);
  assert.equal(server.stderr, "");
});

Deno.test("fib_server.ts --workers computes fib(n) in worker threads and answers every call", async () => {
  await using broker = await openBroker();
  const args = ["--url", BROKER_URL, "--queue", broker.queue, "--workers", "2"];
  await using server = spawn(FIB_SERVER, [...args, "--handler-timeout", "100000"]);
  await waitFor("the server to start", () => server.stdout.includes("Awaiting RPC requests"));
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue: broker.queue });
  const answers = await Promise.all([10, 90, 1000].map((n) => client.call(n, { timeout: 10_000 })));
  assert.deepEqual(answers.slice(0, 2), [55n, 2880067194370816120n]);
  assert.equal(answers[2].toString().length, 209); // fib(1000) has 209 digits
  assert.equal(server.stderr, "");
});

Deno.test("fib_server.ts refuses a --prefetch below --concurrency, and bad counts and times, with one line and exit 2", async () => {
  const cases: [string[], string][] = [
    [
      ["--prefetch", "2", "--concurrency", "5"],
      "fib_server: --prefetch (2) must be at least --concurrency (5) (see --help)",
    ],
    [
      ["--concurrency", "0"],
      'fib_server: --concurrency must be an integer from 1 to 65535, got "0" (see --help)',
    ],
    [
      ["--workers", "0"],
      'fib_server: --workers must be an integer from 1 to 256, got "0" (see --help)',
    ],
    [
      ["--handler-timeout", "1.5"],
      'fib_server: --handler-timeout must be a whole number of ms from 1 to 2147483647, got "1.5" (see --help)',
    ],
  ];
  for (const [args, message] of cases) {
    const result = await run(FIB_SERVER, args);
    assert.equal(result.stdout, "");
    assert.equal(result.stderr, `${message}\n`);
    assert.equal(result.code, 2);
  }
  const help = await run(FIB_SERVER, ["--help"]);
  assert.match(help.stdout, /--concurrency N/);
  assert.match(help.stdout, /--handler-timeout/);
  assert.match(help.stdout, /--workers N/);
});
