/**
 * Tests of rpc/health.ts and `server.health()`: a server whose broker link
 * goes through a TCP proxy of the test's own, cut and restored, and the
 * command-line server's `--health-port`, against the broker.
 *
 * Run: `deno test -A rpc/health_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { RpcServer, serveHealth } from "./mod.ts";
import { startProxy } from "./_test_faults.ts";
import { FIB_SERVER, run, spawn } from "./_test_process.ts";
import { BROKER_URL, openBroker, quiet, waitFor } from "./_test_util.ts";

/** GET /healthz: its status and body. */
async function probe(port: number, path = "/healthz") {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: response.status, body: await response.json().catch(() => null) };
}

/** A free loopback port (free now: the test uses it at once). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

Deno.test("/healthz says 200 while consuming, 503 when the broker link is cut, 200 after recovery, 503 closing", async () => {
  await using broker = await openBroker();
  await using proxy = startProxy();
  const server = await RpcServer.start({
    url: proxy.url,
    queue: broker.queue,
    handler: (request) => request,
    ...quiet,
  });
  await using health = serveHealth(server, { port: 0 });
  try {
    assert.deepEqual(await probe(health.port), {
      status: 200,
      body: { status: "ok", connected: true, consuming: true, closing: false },
    });
    proxy.cut();
    await waitFor("503", async () => (await probe(health.port)).status === 503);
    assert.deepEqual(server.health(), { connected: false, consuming: false, closing: false });
    assert.deepEqual((await probe(health.port)).body, {
      status: "unavailable",
      connected: false,
      consuming: false,
      closing: false,
    });
    await proxy.restore();
    await waitFor(
      "200 after recovery",
      async () => (await probe(health.port)).status === 200,
      30_000,
    );
    assert.equal(await broker.consumerCount(broker.queue), 1);
  } finally {
    await server.close();
  }
  assert.deepEqual(await probe(health.port), {
    status: 503,
    body: { status: "unavailable", connected: false, consuming: false, closing: true },
  });
  assert.equal((await probe(health.port, "/other")).status, 404);
});

Deno.test("fib_server --health-port serves /healthz, and exits 0 on SIGTERM, the endpoint closed", async () => {
  await using broker = await openBroker();
  const port = freePort();
  await using server = spawn(FIB_SERVER, [
    ...["--url", BROKER_URL, "--queue", broker.queue, "--health-port", String(port), "--quiet"],
  ]);
  await waitFor("the health endpoint", () => server.stdout.includes("/healthz"));
  assert.deepEqual(await probe(port), {
    status: 200,
    body: { status: "ok", connected: true, consuming: true, closing: false },
  });
  server.child.kill("SIGTERM");
  assert.equal((await server.status).code, 0);
  assert.equal(
    server.stdout,
    ` [x] Health: http://127.0.0.1:${port}/healthz\n` +
      " [x] SIGTERM: finishing the request in progress (the others go back to the queue), then exiting\n",
  );
  await assert.rejects(probe(port)); // nobody listens any more
});

Deno.test("fib_server refuses a --health-port that is no port, in one line, exit 2", async () => {
  const { code, stdout, stderr } = await run(FIB_SERVER, ["--health-port", "70000"]);
  assert.deepEqual({ code, stdout, stderr }, {
    code: 2,
    stdout: "",
    stderr:
      'fib_server: --health-port must be a TCP port from 1 to 65535, got "70000" (see --help)\n',
  });
});
