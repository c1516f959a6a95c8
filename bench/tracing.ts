/**
 * # bench/tracing.ts: what OpenTelemetry costs
 *
 * Our pair with `OTEL_DENO` unset against the same pair with
 * `OTEL_DENO=true` in both processes, each turn's client a fresh process
 * (`bench/child.ts pipelined`), spans going to the receiver of
 * `bench/otlp_receiver.ts`; and `startCallSpan` with tracing off, in ns per
 * call. Also says whether this process itself traces.
 *
 * @module
 */
import { startCallSpan, tracingEnabled } from "../rpc/_tracing.ts";
import type { Lab, Running, ServerSpec } from "./lab.ts";
import { interleaved, onBothQueueTypes } from "./loops.ts";
import { otlpReceiver, type Received } from "./otlp_receiver.ts";
import { childCommand, run, stdoutOf } from "./processes.ts";
import { fixed, int, interval, say, show, table } from "./report.ts";
import type { QueueType } from "./settings.ts";
import { mapValues, ratio, type Spread, spread } from "./stats.ts";

/** One turn of the tracing measurement: a fresh client process against `server`. */
async function tracedTurn(lab: Lab, server: Running, on: boolean) {
  const { calls, warmup, concurrency } = lab.settings.plan.tracing;
  const config = {
    mode: "pipelined",
    url: lab.settings.url,
    queue: server.queue,
    calls,
    warmup,
    concurrency,
  };
  const env = on ? { ...lab.otel!, OTEL_SERVICE_NAME: "rpc_bench.client" } : {};
  const pids = server.children.map((child) => child.pid);
  const before = await lab.cpu(pids);
  const [deno, args] = childCommand(config);
  const output = await run(deno, args, 180_000, env);
  const after = await lab.cpu(pids);
  const line = stdoutOf("a pipelined client", output).split("\n").at(-1)!;
  const result = JSON.parse(line) as {
    tracing: boolean;
    warmup: number;
    calls: number;
    callsPerSecond: number;
    cpuMs: number;
  };
  if (result.tracing !== on) throw new Error(`a client traced: ${result.tracing}, expected ${on}`);
  return {
    callsPerSecond: result.callsPerSecond,
    calls: result.calls,
    served: result.warmup + result.calls,
    cpuMs: {
      client: result.cpuMs,
      server: after.server - before.server,
      broker: after.broker - before.broker,
      receiver: after.client - before.client,
    },
  };
}

type TracedTurn = Awaited<ReturnType<typeof tracedTurn>>;

/** Interleaved turns of our pair with tracing off and on, one queue type; the first is dropped. */
async function tracingOn(lab: Lab, type: QueueType) {
  const { turns } = lab.settings.plan.tracing;
  const specs: Record<"off" | "on", ServerSpec> = {
    off: { kind: "ours", type, tracing: "off" },
    on: { kind: "ours", type, tracing: "on" },
  };
  try {
    const servers = { off: await lab.server(specs.off), on: await lab.server(specs.on) };
    const runs = await interleaved(
      turns + 1, // the first turn warms the servers up; it is dropped below
      mapValues(servers, (server, name) => () => tracedTurn(lab, server, name === "on")),
    );
    const served = runs.on.reduce((sum, turn) => sum + turn.served, 0); // all: each made spans
    for (const list of Object.values(runs)) list.shift();
    return { runs: runs as Record<"off" | "on", TracedTurn[]>, spansExpected: served };
  } finally {
    // Stopped before the receiver closes: the server sends its last spans as it exits.
    for (const spec of Object.values(specs)) await lab.stopServer(spec);
  }
}

/** The turns on both queue types, with the OTLP receiver running meanwhile; what it received. */
async function tracedRuns(lab: Lab) {
  const receiver = otlpReceiver();
  lab.otel = {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    OTEL_SERVICE_NAME: "rpc_bench.fib_server",
  };
  try {
    const both = await onBothQueueTypes((type) => tracingOn(lab, type));
    return { both, received: receiver.received };
  } finally {
    lab.otel = undefined;
    await receiver.close();
  }
}

/** CPU per call in µs over `list`: the client's per timed call, the others' per call served. */
function cpuPerCall(list: TracedTurn[]) {
  const perCall = (key: keyof TracedTurn["cpuMs"]) => {
    const ms = list.reduce((sum, turn) => sum + turn.cpuMs[key], 0);
    const count = list.reduce(
      (sum, turn) => sum + (key === "client" ? turn.calls : turn.served),
      0,
    );
    return (1000 * ms) / count;
  };
  return {
    client: perCall("client"),
    server: perCall("server"),
    broker: perCall("broker"),
    receiver: perCall("receiver"),
  };
}

/** One queue type's figures: its table row, its summary line, and its JSON. */
function tracingFigures(type: string, runs: Record<"off" | "on", TracedTurn[]>) {
  const rates = mapValues(runs, (list) => list.map((turn) => turn.callsPerSecond));
  const onOverOff = ratio(rates.on, rates.off);
  const cpu = mapValues(runs, cpuPerCall);
  const row = [
    type,
    show(spread(rates.off)),
    show(spread(rates.on)),
    show(onOverOff, fixed(2)),
    interval(onOverOff),
    ...(["client", "server", "broker"] as const).flatMap((key) => [
      int(cpu.off[key]),
      int(cpu.on[key]),
    ]),
    int(cpu.on.receiver),
  ];
  const line = `tracing on, ${type}: ${int(spread(rates.on).median)} calls/s vs ` +
    `${int(spread(rates.off).median)} off, ratio ${fixed(2)(onOverOff.median)} ` +
    `(95 % interval ${interval(onOverOff)}; min–max ${fixed(2)(onOverOff.min)}–` +
    `${fixed(2)(onOverOff.max)})`;
  return { row, line, result: { callsPerSecond: rates, ratio: onOverOff, cpuMicrosPerCall: cpu } };
}

/** The tracing table, one row per queue type. */
function tracingTable(lab: Lab, rows: string[][]): void {
  const { turns, calls, warmup, concurrency } = lab.settings.plan.tracing;
  table(
    `Tracing: our pair (rpc/fib_server.ts, FibonacciRpcClient), each client in a fresh process ` +
      `(bench/child.ts pipelined): off = OTEL_DENO unset, on = OTEL_DENO=true in server and ` +
      `client, spans sent as OTLP/HTTP JSON to a receiver in this process; ${int(warmup)} ` +
      `warm-up calls, then ${int(calls)} at ${concurrency} in flight; calls/s and on / off per ` +
      `turn, median (min–max) of ${turns} interleaved turns (a first one dropped); CPU per call ` +
      `in µs over all turns`,
    [
      "queue",
      "off",
      "on",
      "on / off",
      "95 % interval",
      "client: off",
      "on",
      "server: off",
      "on",
      "broker: off",
      "on",
      "receiver: on",
    ],
    rows,
  );
}

/** The lines under the table: each type's summary, the spans received, what the CPU is. */
function sayTracingNotes(lines: string[], received: Received, expected: number): void {
  say("");
  for (const line of lines) say(line);
  say(
    `Spans received: ${int(received.spans)} in ${int(received.traceExports)} trace exports ` +
      `(${int(received.send)} "send", ${int(received.process)} "process"; each expected ` +
      `${int(expected)}, one per call of the "on" clients, warm-up included); ` +
      `${int(received.posts)} POSTs in all, ${int(received.rejected)} refused.`,
  );
  say(`Client CPU: the child's own, over its timed calls; server, broker and receiver (this`);
  say(`process, parsing the exports): over each client process's life, per call it made.`);
  say(`The "ours" rows of the other tables are tracing off: OTEL_DENO unset everywhere.`);
}

/**
 * The hot path with tracing off: `startCallSpan` and `end`, as the client
 * calls them for every call, in a tight loop; ns per call, median of the
 * rounds after a dropped first. Undefined if this process traces.
 */
function spanMicro(iterations: number, rounds: number): Spread | undefined {
  if (tracingEnabled()) return undefined;
  const perRound: number[] = [];
  let made = 0;
  for (let round = 0; round <= rounds; round++) {
    const began = performance.now();
    for (let i = 0; i < iterations; i++) {
      const span = startCallSpan("rpc_queue", "5f0c9a3e-4b7d-4c1a-9e2f-8d6b3a1c0e57");
      span?.end();
      if (span) made++;
    }
    perRound.push(((performance.now() - began) * 1e6) / iterations);
  }
  if (made) throw new Error(`startCallSpan made ${made} spans with tracing off`);
  return spread(perRound.slice(1));
}

/** Whether this process traces: the in-process clients' rows are tracing-off only if not. */
export function tracingHere(): string {
  return tracingEnabled()
    ? "Tracing is ON in this process (OTEL_DENO=true): the rows of its own clients trace."
    : "Tracing off (OTEL_DENO unset) in this process and every server, except where marked on.";
}

/**
 * 8. What tracing costs: our pair (rpc/fib_server.ts, FibonacciRpcClient in
 * a fresh process) with `OTEL_DENO` unset, against the same pair with
 * `OTEL_DENO=true` in both processes, exporting to a local receiver.
 */
export async function tracing(lab: Lab) {
  const { turns, calls, warmup, concurrency, microIterations, microRounds } =
    lab.settings.plan.tracing;
  const { both, received } = await tracedRuns(lab);
  const results: Record<string, unknown> = { turns, calls, warmup, concurrency, received };
  const rows: string[][] = [];
  const lines: string[] = [];
  let expected = 0;
  for (const [type, { runs, spansExpected }] of Object.entries(both)) {
    expected += spansExpected;
    const { row, line, result } = tracingFigures(type, runs);
    rows.push(row);
    lines.push(line);
    results[type] = result;
  }
  tracingTable(lab, rows);
  sayTracingNotes(lines, received, expected);
  const micro = spanMicro(microIterations, microRounds);
  if (micro) {
    say(
      `\nstartCallSpan + end with tracing off (the client's hot path; ${int(microIterations)} ` +
        `iterations a round, ${microRounds} rounds): ${show(micro, fixed(1))} ns per call`,
    );
  } else say("\n(no startCallSpan figure: this process traces)");
  return { ...results, spansExpected: expected, startCallSpanNs: micro };
}
