/**
 * Tests of the server's rate-limited log (rpc/_log.ts) against a real broker:
 * at most 20 request lines a second, then a count.
 *
 * Run: `deno test -A rpc/_log_test.ts`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { startPair } from "./_test_util.ts";

Deno.test("the server logs at most 20 requests a second, then one line a second saying how many more", async () => {
  const logged: string[] = [];
  await using pair = await startPair({ log: (line) => logged.push(line) });
  const { server, client } = pair;
  const started = Date.now();
  await Promise.all(Array.from({ length: 100 }, (_, n) => client.call(n)));
  const seconds = Math.ceil((Date.now() - started) / 1000);
  await server.close(); // writes the last summary now
  const lines = logged.filter((line) => /^ \[\.\] fib\(\d+\)$/.test(line)).length;
  const summaries = logged.filter((line) => line.startsWith(" [.] Not shown: "));
  assert.ok(summaries.length > 0, "a summary line");
  for (const summary of summaries) {
    assert.match(summary, /^ \[\.\] Not shown: \d+ requests \(at most 20 lines a second\)$/);
  }
  const counted = summaries.reduce((sum, line) => sum + Number(/(\d+) requests/.exec(line)![1]), 0);
  assert.equal(lines + counted, 100, "each request is logged, or counted in a summary");
  assert.ok(lines <= 20 * (seconds + 1), `${lines} lines in ${seconds} s`);
});
