/**
 * Tests that no password leaks by a side door: commas in passwords (a list
 * of URLs splits only where a new amqp:// or amqps:// begins), URLs that do
 * not parse (hidden whole, but for their scheme), stray `#`, `?` and `/`
 * in a password, through every route a URL comes in by: `--url` and
 * `AMQP_URL` of both command lines, `RpcClient.connect({ url })` and
 * `RpcServer.start({ url })`.
 *
 * Run: `deno test -A rpc/secrets_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { RpcClient, RpcServer } from "./mod.ts";
import { FIB_CLIENT, FIB_SERVER, run, type RunResult } from "./_test_process.ts";
import { BROKER_URL, quiet } from "./_test_util.ts";
import { hidePassword, parseBrokerUrls } from "./_urls.ts";

/** The two halves of every password below: neither may ever be printed. */
const SECRETS = /Xy9|S3cr3tPW/;

const broker = new URL(BROKER_URL).host;

/** URLs whose password holds the secrets, each in a way that once leaked or could. */
const LEAKY_URLS = [
  `amqp://guest:Xy9,S3cr3tPW@${broker}`, // a comma: once split into two "URLs"
  `amqp://guest:Xy9,S3cr3tPW@127.0.0.1:1`,
  `amqp://127.0.0.1:1,amqp://guest:Xy9,S3cr3tPW@127.0.0.1:2`,
  `amqp://guest:Xy9/S3cr3tPW@${broker}`, // does not parse
  `amqp://guest:Xy9#S3cr3tPW@${broker}`, // parses, with the password's end as a fragment
  `amqp://guest:Xy9?S3cr3tPW@${broker}`,
  `amqp//guest:Xy9,S3cr3tPW@${broker}`,
  `guest:Xy9,S3cr3tPW@${broker}`,
  `amqp://guest:Xy9 S3cr3tPW@${broker}`,
];

/** Everything a failure shows: message, stack, cause. */
const shown = (error: unknown) => Deno.inspect(error, { depth: 5 });

Deno.test("the library never throws a password, whatever the URL looks like", async () => {
  for (const url of LEAKY_URLS) {
    for (
      const start of [
        () => RpcClient.connect({ url }),
        () => RpcServer.start({ url, queue: "unused", handler: () => "", ...quiet }),
      ]
    ) {
      const error = await start().then(
        (opened) => {
          void opened.close();
          return new Error(`connected with ${url}`);
        },
        (error) => error,
      );
      assert.doesNotMatch(shown(error), SECRETS, url);
      assert.equal((error as Error).message.split("\n").length, 1, (error as Error).message);
    }
  }
});

Deno.test("the command lines never print a password given by --url or AMQP_URL", async () => {
  const runs: Array<[string, () => Promise<RunResult>]> = LEAKY_URLS.flatMap((url) => [
    [`fib_server --url ${url}`, () => run(FIB_SERVER, ["--url", url])],
    [`fib_client --url ${url}`, () => run(FIB_CLIENT, ["--url", url, "5"])],
    [`AMQP_URL=${url} fib_server`, () => run(FIB_SERVER, [], 20_000, { AMQP_URL: url })],
    [`AMQP_URL=${url} fib_client`, () => run(FIB_CLIENT, ["5"], 20_000, { AMQP_URL: url })],
  ]);
  // A few at a time: the machine is shared.
  for (let i = 0; i < runs.length; i += 6) {
    const batch = runs.slice(i, i + 6);
    const outputs = await Promise.all(batch.map(([, start]) => start()));
    for (const [j, { code, stdout, stderr }] of outputs.entries()) {
      const what = batch[j][0];
      assert.doesNotMatch(stdout + stderr, SECRETS, what);
      assert.ok(code === 1 || code === 2, `${what}: exit ${code}`);
      assert.equal(stderr.trimEnd().split("\n").length, 1, `${what}: ${stderr}`);
    }
  }
});

Deno.test("a password with a comma is one URL; a list splits only where a new amqp:// or amqps:// begins", () => {
  const [one] = parseBrokerUrls("amqp://guest:1234,5678@localhost", "AMQP_URL");
  assert.equal(decodeURIComponent(one.password), "1234,5678");
  const list = parseBrokerUrls("amqp://a:1,5@x, amqps://b:2,6@y,AMQP://z", "AMQP_URL");
  assert.deepEqual(list.map((url) => url.host), ["x", "y", "z"]);
});

Deno.test("text that is not a clean URL is hidden but for what comes before its first colon", () => {
  assert.equal(hidePassword("amqp://guest:secret@host"), "amqp://guest:***@host");
  assert.equal(hidePassword("amqp://guest:se/cret@host"), "amqp://…");
  assert.equal(hidePassword("amqp://guest:1234#cret@host"), "amqp://…");
  assert.equal(hidePassword("amqp//guest:secret@host"), "amqp//guest:…");
  assert.equal(hidePassword("--url:amqp://u:secret@h"), "--url:…");
  assert.equal(hidePassword("secret@host"), "…");
  assert.equal(hidePassword("30x"), "30x");
  assert.equal(
    hidePassword("amqp://localhost:99999"),
    "amqp://localhost:99999",
    "no @, no password",
  );
});
