/**
 * Programs run by the rpc/ tests as a user runs them: the command lines
 * (`deno run -A rpc/fib_client.ts ...`) to their end or in the background,
 * from the repository's root, with their output collected.
 *
 * @module
 */
import assert from "node:assert/strict";

/** The repository's root: the working directory of every program the tests run. */
export const ROOT = new URL("..", import.meta.url);

/** What a program printed, and how it ended. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `program args` in `cwd` (the repository's root unless given) to its end, with a deadline. */
export async function runCommand(
  program: string,
  args: string[],
  timeout = 20_000,
  env?: Record<string, string>,
  cwd: string | URL = ROOT,
): Promise<RunResult> {
  const output = await new Deno.Command(program, {
    args,
    cwd,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeout),
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs `deno args` in the repository's root to its end, with a deadline. */
export function runDeno(args: string[], timeout = 20_000, env?: Record<string, string>) {
  return runCommand(Deno.execPath(), args, timeout, env);
}

/** The command-line server, as run from the repository's root. */
export const FIB_SERVER = "rpc/fib_server.ts";

/** The command-line client, as run from the repository's root. */
export const FIB_CLIENT = "rpc/fib_client.ts";

/** The prefix a program's messages start with: `fib_server` for rpc/fib_server.ts. */
export const programName = (script: string) => script.replace(/^.*\//, "").replace(/\.ts$/, "");

/** Runs a program (`rpc/fib_client.ts`, say) as a user would (`deno run -A`), with a deadline. */
export function run(
  script: string,
  args: string[],
  timeout = 20_000,
  env?: Record<string, string>,
) {
  return runDeno(["run", "-A", script, ...args], timeout, env);
}

/** Starts a program in the background; disposing it kills it if still running. */
export function spawn(script: string, args: string[]) {
  return spawnDeno(["run", "-A", script, ...args]);
}

/** Runs `deno` with these arguments in the background, as {@linkcode spawnCommand} does. */
export function spawnDeno(args: string[], options?: SpawnOptions) {
  return spawnCommand(Deno.execPath(), args, options);
}

/** Options of {@linkcode spawnCommand}. */
export interface SpawnOptions {
  env?: Record<string, string>;
  /** "piped" to write() to it; default "null". */
  stdin?: "null" | "piped";
  /** What disposal sends it if it still runs (SIGKILL 5 s later if that does not end it); default SIGKILL. */
  disposeSignal?: Deno.Signal;
  /** Its working directory; default the repository's root. */
  cwd?: string | URL;
}

/** Collects a stream's text as it arrives: `text()` is what has come so far. */
function collectText(stream: ReadableStream<Uint8Array>) {
  let text = "";
  const decoder = new TextDecoder();
  const write = (chunk: Uint8Array) => void (text += decoder.decode(chunk, { stream: true }));
  return { done: stream.pipeTo(new WritableStream({ write })), text: () => text };
}

/**
 * Runs `program args` in the repository's root in the background,
 * collecting its output. `stop()` signals it (SIGKILL 5 s later if it still
 * runs) and waits for it; disposing it stops it with `disposeSignal`.
 */
export function spawnCommand(
  program: string,
  args: string[],
  { env, stdin = "null", disposeSignal = "SIGKILL", cwd = ROOT }: SpawnOptions = {},
) {
  const child = new Deno.Command(program, {
    args,
    cwd,
    env,
    stdin,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const input = stdin === "piped" ? child.stdin.getWriter() : undefined;
  const stdout = collectText(child.stdout);
  const stderr = collectText(child.stderr);
  const reading = Promise.all([stdout.done, stderr.done]);
  let exited = false;
  const status = child.status.then(async (status) => {
    exited = true;
    await reading;
    return status;
  });
  async function stop(signal: Deno.Signal = "SIGTERM") {
    await input?.close().catch(() => {});
    if (!exited) {
      child.kill(signal);
      const killer = setTimeout(() => exited || child.kill("SIGKILL"), 5_000);
      await status.finally(() => clearTimeout(killer));
    }
    return await status;
  }
  return {
    child,
    status,
    stop,
    get exited() {
      return exited;
    },
    get stdout() {
      return stdout.text();
    },
    get stderr() {
      return stderr.text();
    },
    /** Writes `text` to its standard input (only with `stdin: "piped"`). */
    async write(text: string) {
      assert.ok(input, "spawned without stdin: piped");
      await input.write(new TextEncoder().encode(text));
    },
    [Symbol.asyncDispose]: async () => void await stop(disposeSignal),
  };
}

/** What {@linkcode spawnCommand} gives. */
export type Spawned = ReturnType<typeof spawnCommand>;

/** Debian's python3, where python3-pika installs: it runs our Python peers (interop/). */
export const PYTHON = "/usr/bin/python3";

/** Whether python3-pika is installed (for the tests that run interop/*.py). */
export function pikaInstalled(): Promise<boolean> {
  return new Deno.Command(PYTHON, {
    args: ["-c", "import pika"],
    stdout: "null",
    stderr: "null",
  }).output().then((output) => output.success, () => false);
}
