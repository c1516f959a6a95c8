/**
 * # bench/against_rabbitmq_client.ts: ours against npm rabbitmq-client
 *
 * Our generic layer (`RpcClient` → `RpcServer`, `bench/generic_server.ts`)
 * against what a TypeScript team would pick instead, npm `rabbitmq-client`
 * used through its own RPC API (`bench/rabbitmq_client.ts`), on equal terms:
 * the same queue (type, declared the same way), prefetch 50 and 50 handlers
 * at once on both servers, 256 calls in flight from either client, the same
 * work. Three rows, each in interleaved turns on a quorum and a classic queue:
 *
 * - I/O-bound: a handler that awaits 10 ms before it answers, as one that
 *   queries a database does; calls/s;
 * - throughput: fib(1), a trivial handler; calls/s;
 * - sequential: one call at a time; p50 per turn.
 *
 * Besides the two pairs, each client calls the other's server (our client →
 * its server, its client → ours), which shows which side a difference comes
 * from and that the two talk to each other, and ours runs once more with
 * direct reply-to, its client's reply mechanism, and theirs once more as
 * shipped, with Nagle's algorithm on (both its connections; ours and the
 * yardstick turn it off).
 *
 * @module
 */
import { RpcClient } from "../rpc/mod.ts";
import type { Pair } from "./contenders.ts";
import type { Lab, Running, ServerSpec } from "./lab.ts";
import { interleaved, onBothQueueTypes, pipelined, sequential } from "./loops.ts";
import { type Caller, RABBITMQ_CLIENT, rabbitmqClient } from "./rabbitmq_client.ts";
import { fixed, int, say, show, table } from "./report.ts";
import { PREFETCH, QUEUE_TYPES, type QueueType } from "./settings.ts";
import { mapValues, percentile, ratio, type Spread, spread } from "./stats.ts";
import { type CpuTotal, cpuTurn, perCall } from "./throughput.ts";
import { verdict } from "./verdicts.ts";

/** Our pair. */
const OURS = "ours: RpcClient → RpcServer";
/** Theirs, Nagle's algorithm off as ours (`noDelay: true`): the targets' yardstick. */
const THEIRS = "rabbitmq-client: RPCClient → Consumer";
/** Theirs as shipped: Nagle's algorithm on, its default. */
const THEIRS_SHIPPED = "rabbitmq-client as shipped (noDelay off)";
/** Our client against their server. */
const OUR_CLIENT = "our RpcClient → rabbitmq-client's Consumer";
/** Their client against our server. */
const THEIR_CLIENT = "rabbitmq-client's RPCClient → our RpcServer";
/** Our pair, our client on direct reply-to as theirs is. */
const OURS_DIRECT = "ours, client on direct reply-to";
/** The pairs of every row, ours and theirs first (back to back in most turns). */
const PAIRS = [OURS, THEIRS, OUR_CLIENT, THEIR_CLIENT, OURS_DIRECT, THEIRS_SHIPPED];
/** The I/O-bound row's pairs: the server makes the difference there. */
const IO_PAIRS = [OURS, THEIRS, OUR_CLIENT];

/** The four clients (ours twice, theirs twice), each on a connection of its own. */
type Clients = Record<"ours" | "direct" | "theirs" | "theirsShipped", Caller>;

/** Our `RpcClient` as a caller, with the reply queue `replyQueue`. */
async function ourClient(lab: Lab, replyQueue: "exclusive" | "direct"): Promise<Caller> {
  const client = await RpcClient.connect({ url: lab.settings.url, replyQueue });
  const decoder = new TextDecoder();
  return {
    to: (queue) => (n) => client.call(queue, String(n)).then((reply) => decoder.decode(reply)),
    close: () => client.close(),
  };
}

/** The pairs `names`: each client against the server it talks to in that pair. */
function pairs(
  clients: Clients,
  servers: { ours: Running; theirs: Running; theirsShipped?: Running },
  names: string[],
): Record<string, Pair> {
  const pair = (client: Caller, server: Running): Pair => ({
    call: client.to(server.queue),
    close: () => Promise.resolve(), // the clients are shared, closed once
    server,
  });
  const all: Record<string, Pair> = {
    [OURS]: pair(clients.ours, servers.ours),
    [THEIRS]: pair(clients.theirs, servers.theirs),
    [OUR_CLIENT]: pair(clients.ours, servers.theirs),
    [THEIR_CLIENT]: pair(clients.theirs, servers.ours),
    [OURS_DIRECT]: pair(clients.direct, servers.ours),
  };
  if (servers.theirsShipped) {
    all[THEIRS_SHIPPED] = pair(clients.theirsShipped, servers.theirsShipped);
  }
  return Object.fromEntries(names.map((name) => [name, all[name]]));
}

/** Checks that every pair answers fib(30) right: the two libraries do understand each other. */
async function checkAnswers(row: Record<string, Pair>): Promise<void> {
  for (const [name, { call }] of Object.entries(row)) {
    const answer = await call(30);
    if (answer !== "832040") throw new Error(`${name}: fib(30) came back as ${answer}`);
  }
}

/** A warm-up, then interleaved pipelined turns: calls/s per turn, and CPU totals. */
async function pipelinedRow(
  lab: Lab,
  row: Record<string, Pair>,
  { calls, limitMs }: { calls: number; limitMs?: number },
) {
  const { turns } = lab.settings.plan.rabbitmqClient;
  for (const { call } of Object.values(row)) {
    await pipelined(call, 256, Math.min(calls, 500), limitMs ?? 60_000);
  }
  const cpu = mapValues(row, (): CpuTotal => ({ client: 0, server: 0, broker: 0, calls: 0 }));
  const rates = await interleaved(
    turns,
    mapValues(row, (pair, name) => () => cpuTurn(lab, pair, cpu[name], calls, limitMs)),
  );
  return { rates, cpu };
}

/** A warm-up, then interleaved sequential turns: each turn's latencies in ms. */
async function sequentialRow(lab: Lab, row: Record<string, Pair>) {
  const { turns, sequentialCalls } = lab.settings.plan.rabbitmqClient;
  for (const { call } of Object.values(row)) await sequential(call, 30);
  return await interleaved(
    turns,
    mapValues(row, ({ call }) => () => sequential(call, sequentialCalls)),
  );
}

/** The servers of the three rows on one queue type. */
function serverSpecs(lab: Lab, type: QueueType): Record<string, ServerSpec> {
  const { delayMs, concurrency } = lab.settings.plan.rabbitmqClient;
  return {
    ours: { kind: "generic", type, concurrency },
    theirs: { kind: "rabbitmq-client", type, concurrency },
    theirsShipped: { kind: "rabbitmq-client-as-shipped", type, concurrency },
    oursIo: { kind: "generic", type, concurrency, delayMs },
    theirsIo: { kind: "rabbitmq-client", type, concurrency, delayMs },
  };
}

/** The three rows on one queue type, with servers of their own, stopped afterwards. */
async function rowsOn(lab: Lab, type: QueueType) {
  const { calls, ioCalls, ioLimitMs } = lab.settings.plan.rabbitmqClient;
  const specs = serverSpecs(lab, type);
  const clients: Partial<Clients> = {};
  try {
    const servers: Record<string, Running> = {};
    for (const [name, spec] of Object.entries(specs)) servers[name] = await lab.server(spec);
    clients.ours = await ourClient(lab, "exclusive");
    clients.direct = await ourClient(lab, "direct");
    clients.theirs = await rabbitmqClient(lab.settings.url, true);
    clients.theirsShipped = await rabbitmqClient(lab.settings.url, false);
    const { ours, theirs, theirsShipped, oursIo, theirsIo } = servers;
    const trivial = pairs(clients as Clients, { ours, theirs, theirsShipped }, PAIRS);
    const io = pairs(clients as Clients, { ours: oursIo, theirs: theirsIo }, IO_PAIRS);
    await checkAnswers(trivial);
    await checkAnswers(io);
    return {
      io: await pipelinedRow(lab, io, { calls: ioCalls, limitMs: ioLimitMs }),
      throughput: await pipelinedRow(lab, trivial, { calls }),
      sequential: await sequentialRow(lab, trivial),
    };
  } finally {
    for (const client of Object.values(clients)) await client.close().catch(() => {});
    for (const spec of Object.values(specs)) await lab.stopServer(spec);
  }
}

/** Each pair's figure over `theirs`, per turn, for the pairs that have one. */
function overTheirs(perTurn: Record<string, number[]>): Record<string, Spread> {
  return Object.fromEntries(
    Object.keys(perTurn).filter((name) => name !== THEIRS).map((name) => [
      `${name} / rabbitmq-client`,
      ratio(perTurn[name], perTurn[THEIRS]),
    ]),
  );
}

type Rows = Awaited<ReturnType<typeof rowsOn>>;
/** The three rows on both queue types, and the p50 of each sequential turn. */
type Results = { both: Record<QueueType, Rows>; p50s: Record<QueueType, Record<string, number[]>> };
/** The rows' ratios over rabbitmq-client's pair, per queue type. */
type Ratios = Record<QueueType, Record<"io" | "throughput" | "sequential", Record<string, Spread>>>;

/** The calls/s table: both pipelined rows, both queue types. */
function ratesTable(lab: Lab, { both: { quorum, classic } }: Results): void {
  const { turns, calls, ioCalls, ioLimitMs, delayMs, concurrency } =
    lab.settings.plan.rabbitmqClient;
  const cell = (rates: Record<string, number[]>, name: string) =>
    rates[name] ? show(spread(rates[name])) : "";
  table(
    `Against ${RABBITMQ_CLIENT}: 256 calls in flight, one server each (prefetch ${PREFETCH}, ` +
      `concurrency ${concurrency}); calls/s, median (min–max) of ${turns} interleaved turns: ` +
      `I/O-bound, a handler awaiting ${delayMs} ms (${int(ioCalls)} calls or ` +
      `${ioLimitMs / 1000} s, whichever first), and fib(1) (${int(calls)} calls)`,
    ["client → server", "I/O-bound, quorum", "classic", "fib(1), quorum", "classic"],
    PAIRS.map((name) => [
      name,
      cell(quorum.io.rates, name),
      cell(classic.io.rates, name),
      cell(quorum.throughput.rates, name),
      cell(classic.throughput.rates, name),
    ]),
  );
}

/** The sequential table: p50 per turn and p99 over all, both queue types. */
function sequentialTable(lab: Lab, { both, p50s }: Results): void {
  const { turns, sequentialCalls } = lab.settings.plan.rabbitmqClient;
  const cells = (type: QueueType, name: string) => [
    show(spread(p50s[type][name]), fixed(3)),
    percentile(both[type].sequential[name].flat(), 99).toFixed(3),
  ];
  table(
    `Against ${RABBITMQ_CLIENT}, one call at a time (fib(1)); ms; p50 as median (min–max) of ` +
      `${turns} interleaved turns of ${sequentialCalls} calls, p99 over all`,
    ["client → server", "quorum: p50", "p99", "classic: p50", "p99"],
    PAIRS.map((name) => [name, ...cells("quorum", name), ...cells("classic", name)]),
  );
}

/** Every pair over rabbitmq-client's, per turn, in each row; and their table. */
function ratiosTable({ both, p50s }: Results): Ratios {
  const ratios = mapValues(both, (rows, type) => ({
    io: overTheirs(rows.io.rates),
    throughput: overTheirs(rows.throughput.rates),
    sequential: overTheirs(p50s[type as QueueType]),
  })) as Ratios;
  const columns = [["io", "I/O-bound"], ["throughput", "256 in flight"], [
    "sequential",
    "sequential p50",
  ]] as const;
  table(
    `Against ${RABBITMQ_CLIENT}: each pair over rabbitmq-client's, median (min–max) of the ` +
      `per-turn ratios (calls/s; sequential: p50 ms, lower is faster)`,
    ["ratio", ...columns.flatMap(([, label]) => [`${label}, quorum`, "classic"])],
    Object.keys(ratios.quorum.throughput).map((name) => [
      name,
      ...columns.flatMap(([row]) =>
        QUEUE_TYPES.map((type) => {
          const figure = ratios[type][row][name];
          return figure ? show(figure, fixed(2)) : "";
        })
      ),
    ]),
  );
  return ratios;
}

/** CPU per call of client, server and broker, in both pipelined rows. */
function cpuTable({ both: { quorum, classic } }: Results): void {
  const keys = ["client", "server", "broker"] as const;
  const rows = (row: "io" | "throughput", label: string) =>
    Object.keys(quorum[row].cpu).map((name) => [
      `${name} (${label})`,
      ...keys.map((key) => perCall(quorum[row].cpu[name], key)),
      ...keys.map((key) => perCall(classic[row].cpu[name], key)),
    ]);
  table(
    "CPU per call in µs, over all turns: client (this process), server (its process), broker",
    [
      "client → server (row)",
      "quorum: client",
      "server",
      "broker",
      "classic: client",
      ...keys.slice(1),
    ],
    [...rows("io", "I/O-bound"), ...rows("throughput", "fib(1)")],
  );
}

/** What the pairs are, in words. */
function describe(lab: Lab): void {
  const { delayMs, concurrency } = lab.settings.plan.rabbitmqClient;
  const oneAtATime = int(1000 / delayMs);
  const atOnce = int((1000 / delayMs) * concurrency);
  say(`\nOurs: bench/generic_server.ts, RpcServer given concurrency: ${concurrency} (issue 25's`);
  say(`option; a server without it runs one handler at a time: at most ${oneAtATime} calls/s with`);
  say(`a ${delayMs} ms handler, against ${atOnce} for ${concurrency} at once), logging as shipped`);
  say(`to a file; RpcClient, its exclusive callback queue (or direct reply-to where named).`);
  say(`Theirs: bench/rabbitmq_client.ts, createConsumer with concurrency ${concurrency} and qos`);
  say(`prefetchCount ${PREFETCH}, answering with its reply(); createRPCClient with confirm: true`);
  say(`(direct reply-to, its only way); noDelay: true as ours, except "as shipped" (its default,`);
  say(`Nagle's algorithm on). Both servers declare the queue, read n, answer fib(n) as text.`);
}

/**
 * 9. Ours against npm rabbitmq-client, server and client: an I/O-bound row
 * (a handler awaiting 10 ms, 50 at once), 256 in flight with fib(1), and one
 * call at a time; the targets are ours at least even in the first two and
 * at most even in p50 in the third.
 */
export async function againstRabbitmqClient(lab: Lab) {
  const both = await onBothQueueTypes((type) => rowsOn(lab, type));
  const p50s = mapValues(
    both,
    (rows) => mapValues(rows.sequential, (perTurn) => perTurn.map((turn) => percentile(turn, 50))),
  ) as Results["p50s"];
  const results = { both, p50s };
  ratesTable(lab, results);
  sequentialTable(lab, results);
  const ratios = ratiosTable(results);
  cpuTable(results);
  describe(lab);
  const key = `${OURS} / rabbitmq-client`;
  for (const type of QUEUE_TYPES) {
    const { io, throughput, sequential } = ratios[type];
    verdict(`rabbitmq-client, I/O-bound, ${type}: ours / theirs >= 1.0`, io[key], 1, true);
    verdict(
      `rabbitmq-client, 256 in flight, ${type}: ours / theirs >= 1.0`,
      throughput[key],
      1,
      true,
    );
    verdict(
      `rabbitmq-client, sequential, ${type}: ours / theirs, p50 <= 1.0`,
      sequential[key],
      1,
      false,
    );
  }
  return {
    version: RABBITMQ_CLIENT,
    plan: lab.settings.plan.rabbitmqClient,
    ratios,
    ...mapValues(both, (rows, type) => ({
      io: { callsPerSecond: rows.io.rates, cpu: rows.io.cpu },
      throughput: { callsPerSecond: rows.throughput.rates, cpu: rows.throughput.cpu },
      sequentialP50: p50s[type as QueueType],
    })),
  };
}
