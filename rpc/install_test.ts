/**
 * Installing the library as rpc/README.md says: a scratch project in a
 * temporary folder outside the repository, whose deno.json maps
 * `@amqp-rpc/rpc` to this checkout's rpc/mod.ts, runs the README's own
 * examples (its `sum.ts` contract, `server.ts` and `client.ts`, taken from
 * the README as they are, on a queue of the test's own) against the broker,
 * and a client of the test's own calls the README's server 1,000 times at
 * once.
 *
 * Run: `deno test -A rpc/install_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { runCommand, spawnDeno } from "./_test_process.ts";
import { BROKER_URL, openBroker, waitFor } from "./_test_util.ts";

const README = new URL("./README.md", import.meta.url);
const REPOSITORY = fileURLToPath(new URL("..", import.meta.url));
const MOD = fileURLToPath(new URL("./mod.ts", import.meta.url));

/** The README's TypeScript block whose first line is `// <file>...`. */
function readmeBlock(readme: string, file: string): string {
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map(([, code]) => code);
  const block = blocks.find((code) => code.startsWith(`// ${file}`));
  assert.ok(block, `rpc/README.md has a block starting "// ${file}"`);
  return block;
}

/** Runs `deno args` in `cwd` to its end (within 60 s). */
function denoIn(cwd: string, args: string[], env: Record<string, string>) {
  return runCommand(Deno.execPath(), args, 60_000, env, cwd);
}

/** A client of the test's own: the README's contract, 1,000 calls at once, each total checked. */
const MANY = `
import { RpcClient } from "@amqp-rpc/rpc";
import { sum } from "./sum.ts";

await using client = await RpcClient.connect({ timeout: 30_000 });
const started = performance.now();
const totals = await Promise.all(
  Array.from({ length: 1_000 }, (_, i) => client.invoke(sum, { numbers: [i, i, 0.5] })),
);
const ms = Math.round(performance.now() - started);
const wrong = totals.filter(({ total }, i) => total !== 2 * i + 0.5).length;
console.log(JSON.stringify({ calls: totals.length, wrong, ms }));
`;

Deno.test("a project outside the repository imports the library through an import map and calls the broker", async () => {
  await using broker = await openBroker();
  const queue = broker.newQueue(); // the README's server declares it; the test deletes it
  const project = await Deno.makeTempDir({ prefix: "amqp_rpc_install_" });
  try {
    assert.ok(
      !relative(REPOSITORY, project).match(/^[^.]/),
      "the project is outside the repository",
    );
    // As rpc/README.md says: an import map entry, a path relative to the project's deno.json.
    const imports = { "@amqp-rpc/rpc": relative(project, MOD) };
    assert.match(imports["@amqp-rpc/rpc"], /^\.\.\//);
    await Deno.writeTextFile(join(project, "deno.json"), JSON.stringify({ imports }, null, 2));
    const readme = await Deno.readTextFile(README);
    const contract = readmeBlock(readme, "sum.ts");
    assert.ok(contract.includes('procedure("sum"'));
    await Deno.writeTextFile(join(project, "sum.ts"), contract.replace('"sum"', `"${queue}"`));
    await Deno.writeTextFile(join(project, "server.ts"), readmeBlock(readme, "server.ts"));
    await Deno.writeTextFile(join(project, "client.ts"), readmeBlock(readme, "client.ts"));
    await Deno.writeTextFile(join(project, "many.ts"), MANY);
    const env = { AMQP_URL: BROKER_URL, NO_COLOR: "1" };

    const checked = await denoIn(project, ["check", "server.ts", "client.ts", "many.ts"], env);
    assert.equal(checked.code, 0, checked.stderr);

    await using server = spawnDeno(["run", "--allow-net", "--allow-env", "server.ts"], {
      cwd: project,
      env,
      disposeSignal: "SIGKILL",
    });
    await waitFor("the README's server to consume", async () => {
      return (await broker.consumerCount(queue).catch(() => 0)) > 0;
    }, 30_000);
    const client = await denoIn(project, ["run", "--allow-net", "--allow-env", "client.ts"], env);
    assert.deepEqual(client, { code: 0, stdout: "6\n", stderr: "" });
    const many = await denoIn(project, ["run", "--allow-net", "--allow-env", "many.ts"], env);
    assert.equal(many.code, 0, many.stderr);
    const { calls, wrong, ms } = JSON.parse(many.stdout);
    assert.deepEqual({ calls, wrong }, { calls: 1_000, wrong: 0 });
    console.log(`1,000 calls at once to the README's sum server: ${ms} ms`);
    // It holds until SIGTERM, then closes and exits 0.
    assert.equal(server.exited, false);
    assert.equal((await server.stop("SIGTERM")).code, 0);
    assert.match(server.stdout, /^ \[x\] Awaiting RPC requests\n/);
    assert.match(server.stdout, /\nSIGTERM: closing\n/);
    assert.equal(server.stderr, "");
  } finally {
    await Deno.remove(project, { recursive: true });
  }
});
