/**
 * workshop_test.ts: the exercises of WORKSHOP.md, each run as a participant runs it, against a
 * real RabbitMQ (`$AMQP_URL`, else amqp://localhost).
 *
 * The commands, the code edits and the lines a participant should see are read from WORKSHOP.md
 * itself, from its fenced blocks: a block's info string names what it is (```sh terminal 2,
 * ```text terminal 2, ```ts rpc_server.ts), so a change to the page or to the lesson that makes
 * them disagree fails here. In the lines to see, `…` stands for anything without a space.
 *
 * Each test runs the lesson's command lines as subprocesses on a queue of its own
 * (`--queue workshop_test.<uuid>`), deletes it, and ends every process it started, by its PID.
 * Exercise 6 runs our own stand-ins for the official tutorial programs (interop/*.py, with
 * Debian's python3 and pika), and is skipped without them.
 *
 *     deno test -A workshop_test.ts
 *
 * @module
 */
import assert from "node:assert/strict";
import amqp from "npm:amqplib@2.3.1";
import { BROKER, spawn as spawnProgram } from "./_test_spawn.ts";

/** The broker every test uses. */
/** This folder: the lesson, WORKSHOP.md, interop/ and workshop/ are here. */
const HERE = import.meta.dirname!;
/** The page under test. */
const WORKSHOP = await Deno.readTextFile(`${HERE}/WORKSHOP.md`);
/** Debian's python3, where python3-pika installs; it runs our stand-ins in interop/. */
const PYTHON = "/usr/bin/python3";
const pikaMissing = !(await new Deno.Command(PYTHON, {
  args: ["-c", "import pika"],
  stdout: "null",
  stderr: "null",
}).output().then((output) => output.success, () => false));
/** How a participant starts the lesson's server (the page's set-up check). */
const SERVER = "deno run -A rpc_server.ts";
/** What the server prints once it consumes. */
const AWAITING = " [x] Awaiting RPC requests";

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ─── Reading WORKSHOP.md ─────────────────────────────────────────────────────

/** Exercise `number` of the page: its fenced blocks, by language and label. */
function exercise(number: number) {
  return section(`Exercise ${number}:`);
}

/** The section of the page under the `### ` heading that starts with `heading`. */
function section(heading: string) {
  const section = WORKSHOP.split(/^### /m).find((s) => s.startsWith(heading));
  assert.ok(section, `WORKSHOP.md has no "### ${heading}" heading`);
  const blocks = [...section.matchAll(/^```(\w+) ([^\n]+)\n([\s\S]*?)^```$/gm)];
  /** The lines of the one block of `language` labelled `label`. */
  function block(language: string, label: string): string[] {
    const found = blocks.filter(([, lang, info]) => lang === language && info.trim() === label);
    assert.equal(found.length, 1, `"${heading}" has one \`\`\`${language} ${label} block`);
    return found[0][3].replace(/\n$/, "").split("\n");
  }
  return {
    /** The command lines of a ```sh block, each as its words. */
    commands: (label: string) =>
      block("sh", label).filter((line) => line.trim() && !line.startsWith("#")).map(words),
    /** The one command line of a ```sh block. */
    command(label: string) {
      const [command, ...more] = this.commands(label);
      assert.equal(more.length, 0, `"${heading}" has one command in "sh ${label}"`);
      return command;
    },
    /** The lines a ```text block says a participant should see. */
    expected: (label: string) => block("text", label),
    /** A ```ts block: an edit, its first line being the line of the file it goes under. */
    edit: (label: string) => block("ts", label),
  };
}

/** A command line's words: double quotes group words; a `  # comment` ends the line. */
function words(line: string): string[] {
  const code = line.replace(/\s+#.*$/, "");
  return [...code.matchAll(/"([^"]*)"|(\S+)/g)].map(([, quoted, bare]) => quoted ?? bare);
}

/**
 * A line to see as a pattern: `…` stands for anything without a space. Space at the start of a
 * line is not compared: the lesson prints " [x] ...", and `deno fmt` trims a block's common indent.
 */
function pattern(line: string): RegExp {
  const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`^\\s*${line.trim().split("…").map(escape).join("\\S+")}$`);
}

/** Asserts that `program` printed each of `lines`, in order (stdout and stderr each in order). */
function assertSees(who: string, program: Program, lines: string[]) {
  const streams = [program.stdout, program.stderr].map((text) => text.split("\n"));
  const next = [0, 0];
  for (const line of lines) {
    const matches = pattern(line);
    const found = streams.some((stream, s) => {
      const at = stream.findIndex((printed, i) => i >= next[s] && matches.test(printed));
      if (at >= 0) next[s] = at + 1;
      return at >= 0;
    });
    assert.ok(
      found,
      `${who} should print ${JSON.stringify(line)}, in order; it printed:\n` +
        `${program.stdout}${program.stderr}`,
    );
  }
}

/** Asserts that `program` printed exactly `lines` on stdout, and nothing on stderr. */
function assertSeesOnly(who: string, program: Program, lines: string[]) {
  assertSees(who, program, lines);
  assert.equal(
    program.stdout.trimEnd().split("\n").length,
    lines.length,
    `${who}: only ${JSON.stringify(lines)}, got:\n${program.stdout}`,
  );
  assert.equal(program.stderr, "", `${who} printed on stderr`);
}

// ─── Running what a participant runs ─────────────────────────────────────────

type Program = ReturnType<typeof spawn>;

/** A program in the background (see _test_spawn.ts), with what the exercises ask of it. */
function spawn(who: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  const program = spawnProgram(args[0], args.slice(1), env, cwd);
  return Object.assign(program, {
    who,
    /** The lines it printed that match `line` (a line to see, `…` allowed). */
    printed(line: string | RegExp): string[] {
      const matches = typeof line === "string" ? pattern(line) : line;
      return program.stdout.split("\n").filter((printed) => matches.test(printed));
    },
    /** Waits until it prints `line`; fails after `ms`, or if it exits first. */
    async waitFor(line: string, ms = 30_000) {
      const deadline = Date.now() + ms;
      while (!this.printed(line).length) {
        if (program.exited || Date.now() > deadline) {
          assert.fail(
            `${who} did not print ${JSON.stringify(line)}; it printed:\n` +
              `${program.stdout}${program.stderr}`,
          );
        }
        await delay(25);
      }
    },
    /** Waits for it to exit (killed after `ms`): its exit code. */
    async exit(ms = 45_000) {
      const killer = setTimeout(() => program.child.kill("SIGKILL"), ms);
      const { code } = await program.status.finally(() => clearTimeout(killer));
      return code;
    },
    kill(signal: Deno.Signal) {
      if (!program.exited) program.child.kill(signal);
    },
  });
}

/**
 * Runs a command line of the page as a participant would, on `queue`: `deno run ... X.ts` gets
 * `--queue` after the script; `python3 rpc_server.py` and `python3 rpc_client.py` (the official
 * tutorial's) run our stand-ins in interop/ instead, which take the queue from RPC_QUEUE.
 */
function participant(who: string, command: string[], queue: string, cwd = HERE) {
  if (command[0] === "python3") {
    const standIns = {
      "rpc_server.py": ["peer_server.py"],
      "rpc_client.py": ["peer_client.py", "30"],
    };
    const [script, ...args] = standIns[command[1] as keyof typeof standIns] ?? assert.fail(
      `${who}: no stand-in for ${command.join(" ")}`,
    );
    const program = [PYTHON, `${HERE}/interop/${script}`, ...args, ...command.slice(2)];
    return spawn(who, program, HERE, { RPC_QUEUE: queue });
  }
  assert.deepEqual(command.slice(0, 3), ["deno", "run", "-A"], `${who}: ${command.join(" ")}`);
  const script = command.findIndex((word) => word.endsWith(".ts"));
  assert.ok(script > 0, `${who}: no script in ${command.join(" ")}`);
  const args = [...command.slice(1, script + 1), "--queue", queue, ...command.slice(script + 1)];
  return spawn(who, [Deno.execPath(), ...args], cwd);
}

/** A fresh queue name; disposing it deletes the queue, if a server declared it. */
function ownQueue() {
  const name = `workshop_test.${crypto.randomUUID()}`;
  return {
    name,
    async [Symbol.asyncDispose]() {
      const connection = await amqp.connect(BROKER);
      try {
        const channel = await connection.createChannel();
        await channel.deleteQueue(name);
      } finally {
        await connection.close();
      }
    },
  };
}

/**
 * A folder of the test's own with a copy of rpc_server.ts, the page's edit applied to it, and,
 * if `commentOut` is given, the one line that contains it made a comment.
 */
async function editedServer(edit: string[], commentOut?: string) {
  const [anchor, ...added] = edit;
  assert.match(anchor, /function fib\(/, "the edit goes under the first line of function fib");
  const lines = (await Deno.readTextFile(`${HERE}/rpc_server.ts`)).split("\n");
  const at = lines.findIndex((line) => line.trimEnd() === anchor.trimEnd());
  assert.ok(at >= 0, `rpc_server.ts has no line ${JSON.stringify(anchor)}, as WORKSHOP.md says`);
  lines.splice(at + 1, 0, ...added);
  if (commentOut !== undefined) {
    const found = lines.flatMap((line, i) => line.includes(commentOut) ? [i] : []);
    assert.equal(found.length, 1, `rpc_server.ts has one line with ${commentOut}`);
    lines[found[0]] = lines[found[0]].replace(/^(\s*)/, "$1// ");
  }
  const folder = await Deno.makeTempDir({ prefix: "workshop_test." });
  await Deno.writeTextFile(`${folder}/rpc_server.ts`, lines.join("\n"));
  return {
    folder,
    async [Symbol.asyncDispose]() {
      await Deno.remove(folder, { recursive: true });
    },
  };
}

/** The lines of `program` that say which fib it computed. */
const fibLines = (program: Program) => program.printed(/^ \[\.\] fib\(/);

// ─── The exercises ───────────────────────────────────────────────────────────

Deno.test("the page's set-up check starts the server as these tests do", () => {
  assert.match(
    WORKSHOP,
    new RegExp(`^${SERVER} +# prints "${AWAITING.replace(/[[\]]/g, "\\$&")}"`, "m"),
  );
});

Deno.test("the picture says only what the lesson's code does", async () => {
  const picture = WORKSHOP.match(/^```mermaid\n(sequenceDiagram\n[\s\S]*?)^```$/m)?.[1] ?? "";
  const server = await Deno.readTextFile(`${HERE}/rpc_server.ts`);
  const client = await Deno.readTextFile(`${HERE}/rpc_client.ts`);
  const claims: [string, string, RegExp][] = [
    ["prefetch 1", server, /\.prefetch\(1\)/],
    ["(durable, quorum)", server, /durable: true,\s+arguments: \{ "x-queue-type": "quorum" \}/],
    ["consumes it with acks", server, /channel\.ack\(request\)/],
    ["amq.gen-… (exclusive)", client, /assertQueue\("", \{ exclusive: true \}\)/],
    ["expiration 30000", client, /expiration\s*[:=]\s*timeout\b/],
    ["expiration 30000", client, /timeout = 30_000|default: "30000"/],
    ["reply_to amq.gen-…", client, /replyTo/],
    ["a reply whose correlation_id no call", client, /no call waits/],
  ];
  for (const [claim, code, does] of claims) {
    assert.ok(picture.includes(claim), `the picture says ${JSON.stringify(claim)}`);
    assert.match(code, does, `the picture says ${JSON.stringify(claim)}; the code should match`);
  }
  // The ack after the reply: in the server, sendToQueue comes before ack.
  assert.ok(server.indexOf("sendToQueue(") < server.indexOf("channel.ack("));
  assert.ok(/reply_to[^\n]*\n[^\n]*correlation_id/.test(picture), "both on the request's arrow");
});

Deno.test("the run: one server, one client, and fib(30) comes back", async () => {
  const page = section("Run");
  await using queue = ownQueue();
  await using server = participant("terminal 1", words(SERVER), queue.name);
  await server.waitFor(AWAITING);
  await using client = participant("terminal 2", page.command("terminal 2"), queue.name);
  assert.equal(await client.exit(), 0, client.stderr);
  assertSees("terminal 2", client, page.expected("terminal 2"));
  await server.waitFor(page.expected("terminal 1").at(-1)!);
  assertSees("terminal 1", server, page.expected("terminal 1"));
});

Deno.test("exercise 1, many calls at once over one callback queue: each reply matches its call by correlation_id", async () => {
  const page = exercise(1);
  await using queue = ownQueue();
  await using server = participant("the server", words(SERVER), queue.name);
  await server.waitFor(AWAITING);
  await using client = participant("terminal 2", page.command("terminal 2"), queue.name);
  assert.equal(await client.exit(), 0, client.stderr);
  assertSees("terminal 2", client, page.expected("terminal 2"));
  const replyTo = client.stderr.match(/amq\.gen-[\w-]+/g) ?? [];
  assert.ok(replyTo.length >= 3, "each request names its reply_to");
  assert.equal(new Set(replyTo).size, 1, "one callback queue for every call");
  const ids = [...client.stderr.matchAll(/ \[>\] .*correlation_id (\S+?),/g)].map(([, id]) => id);
  assert.equal(new Set(ids).size, 3, "a correlation_id of its own for each call");
});

Deno.test("exercise 2, no server: the call times out, and its request expires before a server comes", async () => {
  const page = exercise(2);
  await using queue = ownQueue();
  {
    // The server of the exercises before, stopped with Ctrl-C: rpc_queue stays.
    await using before = participant("the server before", words(SERVER), queue.name);
    await before.waitFor(AWAITING);
    await delay(1_000); // a participant is not that quick: the server listens for Ctrl-C by now
    before.kill("SIGINT");
    assert.equal(await before.exit(), 0, "Ctrl-C stops the server with exit code 0");
  }
  await using client = participant("terminal 2", page.command("terminal 2"), queue.name);
  assert.equal(await client.exit(), 1);
  assertSees("terminal 2", client, page.expected("terminal 2"));
  await using server = participant("terminal 1", page.command("terminal 1"), queue.name);
  await server.waitFor(AWAITING);
  await delay(3_000); // a request still in the queue would be computed by now
  server.kill("SIGINT");
  assert.equal(await server.exit(), 0);
  assertSeesOnly("terminal 1", server, page.expected("terminal 1"));
});

Deno.test("exercise 3, two servers share the work: each computes some, none twice", async () => {
  const page = exercise(3);
  await using queue = ownQueue();
  await using one = participant("terminal 1", page.command("terminal 3"), queue.name);
  await using three = participant("terminal 3", page.command("terminal 3"), queue.name);
  await Promise.all([one.waitFor(AWAITING), three.waitFor(AWAITING)]);
  await using client = participant("terminal 2", page.command("terminal 2"), queue.name);
  assert.equal(await client.exit(), 0, client.stderr);
  assertSees("terminal 2", client, page.expected("terminal 2"));
  const both = [...fibLines(one), ...fibLines(three)].map((line) => line.trim()).sort();
  const together = page.expected("terminals 1 and 3 together").map((line) => line.trim());
  assert.deepEqual(both, together.sort());
  assert.ok(fibLines(one).length > 0 && fibLines(three).length > 0, "each server takes some");
});

Deno.test("exercise 4, a slow request: a busy server gets no new request while the other answers", async () => {
  const page = exercise(4);
  await using queue = ownQueue();
  await using slow = await editedServer(page.edit("rpc_server.ts"));
  const start = (who: string) => participant(who, words(SERVER), queue.name, slow.folder);
  await using one = start("terminal 1");
  await using three = start("terminal 3");
  await Promise.all([one.waitFor(AWAITING), three.waitFor(AWAITING)]);
  await using waiting = participant("terminal 2", page.command("terminal 2"), queue.name);
  const [busy, other] = await busyAndOther(one, three, " [.] fib(100)");
  await using quick = participant("terminal 4", page.command("terminal 4"), queue.name);
  assert.equal(await quick.exit(), 0, quick.stderr);
  assert.ok(!waiting.exited, "terminal 2 still waits for fib(100) when terminal 4 is answered");
  assertSees("terminal 4", quick, page.expected("terminal 4"));
  assertSees("the other server", other, page.expected("the other server"));
  assert.equal(await waiting.exit(), 0, waiting.stderr);
  assertSees("terminal 2", waiting, page.expected("terminal 2"));
  assert.deepEqual(fibLines(busy), [" [.] fib(100)"], "the busy server took nothing else");
});

Deno.test("exercise 4's hint: without prefetch 1, the busy server is handed small requests too", async () => {
  const page = exercise(4);
  assert.match(WORKSHOP, /Comment out the `prefetch` line/);
  await using queue = ownQueue();
  await using slow = await editedServer(page.edit("rpc_server.ts"), ".prefetch(1)");
  const start = (who: string) => participant(who, words(SERVER), queue.name, slow.folder);
  await using one = start("terminal 1");
  await using three = start("terminal 3");
  await Promise.all([one.waitFor(AWAITING), three.waitFor(AWAITING)]);
  await using waiting = participant("terminal 2", page.command("terminal 2"), queue.name);
  const [busy] = await busyAndOther(one, three, " [.] fib(100)");
  await using quick = participant("terminal 4", page.command("terminal 4"), queue.name);
  assert.equal(await quick.exit(), 0, quick.stderr);
  assert.equal(await waiting.exit(), 0, waiting.stderr);
  assert.ok(fibLines(busy).length > 1, "the busy server took some of fib(1) to fib(4)");
});

Deno.test("exercise 5, a server dies in the middle of a request: the broker hands it to the other", async () => {
  const page = exercise(5);
  await using queue = ownQueue();
  await using slow = await editedServer(exercise(4).edit("rpc_server.ts"));
  const start = (who: string) => participant(who, words(SERVER), queue.name, slow.folder);
  await using one = start("terminal 1");
  await using three = start("terminal 3");
  await Promise.all([one.waitFor(AWAITING), three.waitFor(AWAITING)]);
  await using client = participant("terminal 2", page.command("terminal 2"), queue.name);
  const [busy, other] = await busyAndOther(one, three, " [.] fib(100)");
  busy.kill("SIGHUP"); // what closing its terminal window sends it
  await busy.exit();
  const [again] = page.expected("the other server");
  await other.waitFor(again);
  assert.equal(await client.exit(), 0, client.stderr);
  assertSees("terminal 2", client, page.expected("terminal 2"));
  assert.equal(client.printed(" [.] Got …").length, 1, "one answer");
});

Deno.test("exercise 5's hint: Ctrl-C lets the busy server finish and reply before it stops", async () => {
  const page = exercise(5);
  assert.match(WORKSHOP, /Try Ctrl-C instead of closing the window: the server first finishes/);
  await using queue = ownQueue();
  await using slow = await editedServer(exercise(4).edit("rpc_server.ts"));
  const start = (who: string) => participant(who, words(SERVER), queue.name, slow.folder);
  await using one = start("terminal 1");
  await using three = start("terminal 3");
  await Promise.all([one.waitFor(AWAITING), three.waitFor(AWAITING)]);
  await using client = participant("terminal 2", page.command("terminal 2"), queue.name);
  const [busy, other] = await busyAndOther(one, three, " [.] fib(100)");
  busy.kill("SIGINT");
  assert.equal(await busy.exit(), 0, busy.stderr);
  assert.equal(await client.exit(), 0, client.stderr);
  assertSees("terminal 2", client, page.expected("terminal 2"));
  assert.deepEqual(fibLines(other), [], "the other server computed nothing");
});

/** Waits until one of two servers prints `line`: that one, then the other. */
async function busyAndOther(one: Program, two: Program, line: string, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (one.printed(line).length) return [one, two];
    if (two.printed(line).length) return [two, one];
    assert.ok(Date.now() < deadline, `neither server printed ${JSON.stringify(line)}`);
    await delay(25);
  }
}

Deno.test({
  name: "exercise 6, a server in another language, and back: the wire format is the whole contract",
  ignore: pikaMissing,
  async fn() {
    const page = exercise(6);
    await using queue = ownQueue();
    {
      await using python = participant("python server", page.command("python server"), queue.name);
      await python.waitFor(" [x] peer server ready on … (quorum)");
      await using client = participant("deno client", page.command("deno client"), queue.name);
      assert.equal(await client.exit(), 0, client.stderr);
      assertSees("deno client", client, page.expected("deno client"));
      python.kill("SIGINT");
      assert.equal(await python.exit(), 0);
    }
    await using server = participant("deno server", page.command("deno server"), queue.name);
    await server.waitFor(AWAITING);
    await using python = participant("python client", page.command("python client"), queue.name);
    assert.equal(await python.exit(), 0, python.stderr);
    assertSees("python client", python, page.expected("python client"));
    assertSees("deno server", server, page.expected("deno server"));
    // The official Node client takes its replies by direct reply-to: so does our stand-in here.
    assert.match(WORKSHOP, /Node's\s+`rpc_server\.js`\s+and\s+`rpc_client\.js`/);
    const node = ["python3", "rpc_client.py", "--reply", "direct"];
    await using direct = participant("a client on direct reply-to", node, queue.name);
    assert.equal(await direct.exit(), 0, direct.stderr);
    assertSees("a client on direct reply-to", direct, page.expected("python client"));
  },
});
if (pikaMissing) console.log("exercise 6 skipped: it needs /usr/bin/python3 with pika");

/** Exercise 7's solution: a copy of the lesson, changed to reverse strings. */
const SOLUTION = `${HERE}/workshop/solution-reverse`;

Deno.test("exercise 7, another function: the solution reverses strings, in both files", async () => {
  const page = exercise(7);
  assert.ok(WORKSHOP.includes("(workshop/solution-reverse/)"), "the page links the solution");
  await using queue = ownQueue();
  await using server = participant("terminal 1", page.command("terminal 1"), queue.name, SOLUTION);
  await server.waitFor(AWAITING);
  await using client = participant("terminal 2", page.command("terminal 2"), queue.name, SOLUTION);
  assert.equal(await client.exit(), 0, client.stderr);
  assertSees("terminal 2", client, page.expected("terminal 2"));
  assertSees("terminal 1", server, page.expected("terminal 1"));
});

Deno.test("exercise 7's hint: changed on one side only, the pair gives a wrong answer or an error", async () => {
  const page = exercise(7);
  await using queue = ownQueue();
  {
    await using server = participant("reverse server", words(SERVER), queue.name, SOLUTION);
    await server.waitFor(AWAITING);
    const asking = words("deno run -A rpc_client.ts 30");
    await using client = participant("fib client", asking, queue.name);
    assert.equal(await client.exit(), 0, client.stderr);
    assertSees("fib client", client, page.expected("fib client, reverse server"));
  }
  await using server = participant("fib server", words(SERVER), queue.name);
  await server.waitFor(AWAITING);
  const asking = words("deno run -A rpc_client.ts hello");
  await using client = participant("reverse client", asking, queue.name, SOLUTION);
  assert.equal(await client.exit(), 1);
  assertSees("reverse client", client, page.expected("reverse client, fib server"));
});

Deno.test("exercise 7's solution keeps the lesson's rules: 170 lines, 80 columns, amqplib only", async () => {
  for (const file of ["rpc_server.ts", "rpc_client.ts"]) {
    const text = await Deno.readTextFile(`${SOLUTION}/${file}`);
    const lines = text.trimEnd().split("\n");
    assert.ok(lines.length <= 170, `${file}: ${lines.length} lines`);
    const wide = lines.filter((line) => [...line].length > 80);
    assert.deepEqual(wide, [], `${file}: lines over 80 columns`);
    const imports = [...text.matchAll(/^import .* from "([^"]+)";$/gm)].map(([, from]) => from);
    assert.ok(imports.every((from) => from === "npm:amqplib@2.3.1" || from.startsWith("node:")));
  }
});
