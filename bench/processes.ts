/**
 * # bench/processes.ts: the processes the benchmark starts
 *
 * Runs commands in the repository with an environment free of `OTEL_*`
 * variables, tracks every child in one set so that `Lab.close()` (also on
 * Ctrl-C) can stop them all by PID, and stops one with SIGTERM, then SIGKILL.
 *
 * @module
 */
import { ROOT } from "./settings.ts";

/** SIGTERM to the child's PID; SIGKILL if it is still there after 10 s. Returns its stdout. */
export async function stop(child: Deno.ChildProcess): Promise<string> {
  let output = Promise.resolve("");
  try {
    output = new Response(child.stdout).text().catch(() => "");
  } catch { /* its stdout is not piped */ }
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone meanwhile */ }
  }, 10_000);
  await child.status;
  clearTimeout(timer);
  return await output;
}

/** Runs a command to its end in the repository, killed if it takes longer than `limitMs`. */
export async function run(
  command: string,
  args: string[],
  limitMs: number,
  env: Record<string, string> = {},
): Promise<Deno.CommandOutput> {
  const child = new Deno.Command(command, {
    args,
    cwd: ROOT,
    clearEnv: true,
    env: childEnv(env),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(limitMs),
  }).spawn();
  track(child);
  return await child.output();
}

/**
 * A child's environment: this process's without any `OTEL_*` variable (so
 * tracing is off unless `extra` turns it on), plus `extra`.
 */
export function childEnv(extra: Record<string, string>): Record<string, string> {
  const env = Object.entries(Deno.env.toObject()).filter(([name]) => !name.startsWith("OTEL_"));
  return { ...Object.fromEntries(env), ...extra };
}

/** Every process the benchmark started and that is still running, for Lab.close() to stop. */
export const children = new Set<Deno.ChildProcess>();

/** Adds `child` to `children` until it exits. */
export function track(child: Deno.ChildProcess): void {
  children.add(child);
  child.status.then(() => children.delete(child));
}

/** A finished command's stdout, trimmed; if it failed, an error "`what` failed: STDERR". */
export function stdoutOf(what: string, output: Deno.CommandOutput): string {
  if (!output.success) {
    throw new Error(`${what} failed: ${new TextDecoder().decode(output.stderr).trim()}`);
  }
  return new TextDecoder().decode(output.stdout).trim();
}

/** Runs a command as run() does; its stdout as stdoutOf() gives it. */
export async function runOrThrow(
  what: string,
  command: string,
  args: string[],
  limitMs: number,
  env: Record<string, string> = {},
): Promise<string> {
  return stdoutOf(what, await run(command, args, limitMs, env));
}

/** A short command's stdout, trimmed, success or not (10 s at most; "" if it cannot run). */
export async function probe(command: string, args: string[]): Promise<string> {
  return new TextDecoder().decode((await run(command, args, 10_000).catch(() => null))?.stdout)
    .trim();
}

/** `deno run -A ...args`, as a command and its arguments. */
export function denoRun(...args: string[]): [string, string[]] {
  return [Deno.execPath(), ["run", "-A", ...args]];
}

/** `deno run -A [flags] bench/child.ts CONFIG`: one of child.ts's modes, `config.mode`. */
export function childCommand(
  config: { mode: string; [key: string]: unknown },
  ...flags: string[]
): [string, string[]] {
  return denoRun(...flags, "bench/child.ts", JSON.stringify(config));
}
