/**
 * The proxy as a real child process (`node .test-build/index.js`, src/ as this run transpiled it),
 * for the tests that need signals, restarts or several processes: only PATH, HOME (the working folder) and the test's
 * variables in its environment, its output kept for the secret scan and for the listening port.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { BUILT_ENTRY } from './built';

export interface ProxyProcess {
  child: ChildProcessWithoutNullStreams;
  out: string[];
  err: string[];
  /** The exit code as a string, or the signal's name (`'0'`, `'1'`, `'SIGKILL'`). */
  exited: Promise<string>;
}

export function startProxyProcess(env: Record<string, string>, cwd: string): ProxyProcess {
  const child = spawn(process.execPath, [BUILT_ENTRY], {
    cwd,
    env: { PATH: process.env.PATH ?? '', HOME: cwd, MEM0_TELEMETRY: 'false', ...env },
  });
  const out: string[] = [];
  const err: string[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c.toString()));
  child.stderr.on('data', (c: Buffer) => err.push(c.toString()));
  const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? String(code))));
  return { child, out, err, exited };
}

/** The port from the `listening` line (JSON in production, readable with DEBUG=true: `"port":N` in both). */
export async function listeningPort(proc: ProxyProcess, timeoutMs = 20_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const line = proc.out
      .join('')
      .split('\n')
      .find((l) => l.includes('listening'));
    const port = line ? /"port":(\d+)/.exec(line)?.[1] : undefined;
    if (port) return Number(port);
    if (proc.child.exitCode !== null) throw new Error(`exited early: ${proc.err.join('')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('not listening in time');
}
