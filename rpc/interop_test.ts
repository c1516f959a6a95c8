/**
 * Interop tests: the Fibonacci server and client against other programs on
 * the same queue, through a real broker.
 *
 * interop/peer_server.py and interop/peer_client.py are small pika programs
 * of our own that declare and reply as the official tutorial programs do:
 * `--declare quorum` as today's servers (since 2026-03-16), `--declare
 * classic` as older copies and amqplib's bundled examples, `--declare none`
 * as today's clients; `--reply exclusive` (Python's) or `direct` (Node's).
 * They need Debian's python3-pika; without it those tests are ignored.
 *
 * The lesson programs at the top of the repository (rpc_server.ts and
 * rpc_client.ts) and the production ones (rpc/fib_server.ts and
 * rpc/fib_client.ts) must work together both ways.
 *
 * Run: `deno test -A rpc/interop_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FibonacciRpcClient } from "./mod.ts";
import {
  FIB_CLIENT,
  FIB_SERVER,
  pikaInstalled,
  PYTHON,
  run,
  runCommand,
  runDeno,
  spawn,
  spawnCommand,
  spawnDeno,
  type Spawned,
} from "./_test_process.ts";
import { type Broker, BROKER_URL, openBroker, waitFor } from "./_test_util.ts";

const interop = { ignore: !(await pikaInstalled()), sanitizeResources: true };

/** Runs a Python program of interop/ to its end, on `queue`, with a deadline. */
function runPeer(script: string, args: string[], queue: string, timeout = 20_000) {
  return runCommand(PYTHON, [`interop/${script}`, ...args], timeout, {
    RPC_QUEUE: queue,
    AMQP_URL: BROKER_URL,
  });
}

/**
 * Starts interop/peer_server.py on `queue`; disposing it stops it by its PID
 * (SIGTERM, then SIGKILL after 5 s) and waits for it.
 */
function spawnPeerServer(declare: "quorum" | "classic", queue: string) {
  return spawnCommand(PYTHON, ["interop/peer_server.py", "--declare", declare], {
    env: { RPC_QUEUE: queue, AMQP_URL: BROKER_URL },
    disposeSignal: "SIGTERM",
  });
}

/** Our command-line server on `queue`; disposing it kills it if still running. */
async function spawnOurServer(queue: string, ...args: string[]) {
  const server = spawn(FIB_SERVER, ["--queue", queue, ...args]);
  await waitFor(
    "our server to start",
    () => server.stdout.includes("Awaiting RPC requests") || server.stderr !== "",
  );
  assert.equal(server.stderr, "");
  return server;
}

/** Waits until their server consumes, or fails with what it said. */
async function peerReady(peer: Spawned) {
  await waitFor("their server to be ready", () => peer.stdout.includes("ready on") || peer.exited);
  assert.match(peer.stdout, /^ \[x\] peer server ready on \S+ \((quorum|classic)\)\n/, peer.stderr);
}

/** Stops one of our command-line servers with SIGTERM; it must exit 0. */
async function stopOurs(server: Spawned) {
  assert.equal((await server.stop("SIGTERM")).code, 0, server.stderr);
}

/** Stops their server with SIGTERM; it must exit 0 and say so. */
async function stopTheirs(peer: Spawned) {
  assert.equal((await peer.stop("SIGTERM")).code, 0, peer.stderr);
  assert.match(peer.stdout, / \[x\] peer server stopped \(SIGTERM\)\n$/);
}

/** Declares `queue` on a channel of its own: "ok", or the broker's refusal code. */
function declareAs(broker: Broker, queue: string, type: "quorum" | "classic") {
  return broker.withChannel((channel) =>
    channel.assertQueue(
      queue,
      type === "quorum"
        ? { durable: true, arguments: { "x-queue-type": "quorum" } }
        : { durable: false },
    )
  ).then(() => "ok", (error) => `refused: ${(error as { code?: number }).code}`);
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
  const cli = run(FIB_CLIENT, ["--queue", queue, "25"]); // starts while the library calls
  await using client = await FibonacciRpcClient.connect({ url: BROKER_URL, queue });
  assert.deepEqual(await Promise.all([0, 1, 10, 20, 90].map((n) => client.call(n))), [
    0n,
    1n,
    55n,
    6765n,
    2880067194370816120n,
  ]);
  const { stdout, code } = await cli;
  assert.equal(stdout, " [x] Requesting fib(25)\n [.] Got 75025\n");
  assert.equal(code, 0);
}

/** Waits for our server to log that it takes `queue` as it is, after a 406. */
async function usesItAsItIs(server: Spawned, queue: string) {
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
    assert.equal(await broker.consumerCount(first), 2);
    await theirClientGets(first, 30, 832040n, "quorum");
    await theirClientGets(first, 31, 1346269n, "none", "direct");
    await ourClientGets(first);
    // Ours declares first, theirs joins.
    const second = broker.newQueue();
    await using ours2 = await spawnOurServer(second);
    await using peer2 = spawnPeerServer("quorum", second);
    await peerReady(peer2);
    assert.equal(await broker.consumerCount(second), 2);
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
    assert.equal(await broker.consumerCount(broker.queue), 2);
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
    const [server, client] = await Promise.all([
      runPeer("peer_server.py", ["--declare", "classic"], broker.queue),
      runPeer("peer_client.py", ["5", "--declare", "classic"], broker.queue),
    ]);
    assert.match(server.stderr, refusal);
    assert.equal(server.stdout, "");
    assert.equal(server.code, 3);
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
    const outputs = await Promise.all(
      ["correlation_id", "reply_to", "both"].map((field) =>
        runPeer("hostile_publish.py", ["--check", "--count", "4", "--field", field], "unused")
      ),
    );
    for (const output of outputs) {
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
    assert.equal(await broker.consumerCount(first), 2);
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

// ─── The lesson and the production edition together ────────────────────────

/** The arguments of `deno` that run a lesson program with the permissions it asks for. */
const lesson = (script: string, args: string[]) => {
  return ["run", "--allow-net", "--allow-env", script, ...args];
};

Deno.test("the lesson server (rpc_server.ts) answers the production client (rpc/fib_client.ts)", async () => {
  await using broker = await openBroker();
  await using server = spawnDeno(lesson("rpc_server.ts", ["--queue", broker.queue]));
  await waitFor(
    "the lesson server to consume",
    () => server.stdout.includes(" [x] Awaiting RPC requests") || server.exited,
  );
  assert.ok(!server.exited, `the lesson server exited: ${server.stderr}`);
  const client = await run(FIB_CLIENT, ["--queue", broker.queue, "30"]);
  assert.equal(client.stderr, "");
  assert.equal(client.stdout, " [x] Requesting fib(30)\n [.] Got 832040\n");
  assert.equal(client.code, 0);
});

Deno.test("the production server (rpc/fib_server.ts) answers the lesson client (rpc_client.ts)", async () => {
  await using broker = await openBroker();
  await using server = await spawnOurServer(broker.queue);
  const client = await runDeno(lesson("rpc_client.ts", ["--queue", broker.queue, "30"]));
  assert.match(client.stdout, / \[\.\] Got 832040\n/, client.stderr);
  assert.equal(client.code, 0, client.stderr);
  await waitFor("our server to log the request", () => server.stdout.includes(" [.] fib(30)\n"));
  await stopOurs(server);
});
