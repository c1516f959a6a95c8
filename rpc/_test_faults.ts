/**
 * Faults the rpc/ tests provoke for real: a connection closed from the
 * broker's side (rabbitmqctl), TCP proxies of the test's own that cut every
 * link or count the writes, and a port that never speaks AMQP.
 *
 * @module
 */
import assert from "node:assert/strict";
import amqp from "npm:amqplib@2.3.1";
import { spawnDeno } from "./_test_process.ts";
import { BROKER_URL, shown, waitFor } from "./_test_util.ts";

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
