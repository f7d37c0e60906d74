import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const SCRIPT = path.join(__dirname, '..', '..', 'scripts', 'check-imports.mjs');

/** Runs the import check over a scratch src/ made of `files`; returns its exit code and output. */
function check(files: Record<string, string>): { code: number; output: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'import-check-'));
  try {
    for (const [rel, text] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
      fs.writeFileSync(path.join(dir, rel), text);
    }
    try {
      return { code: 0, output: execFileSync(process.execPath, [SCRIPT, dir], { encoding: 'utf8', stdio: 'pipe' }) };
    } catch (err) {
      const e = err as { status: number; stderr: string };
      return { code: e.status, output: e.stderr };
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('the import check', () => {
  it('passes the project’s own src/', () => {
    const out = execFileSync(process.execPath, [SCRIPT], { encoding: 'utf8' });
    expect(out).toMatch(/layering holds, no cycles/);
  });

  it('accepts imports that run down the layers', () => {
    const result = check({
      'errors.ts': 'export class E {}\n',
      'http/context.ts': "import { E } from '../errors';\n",
      'memory/scope.ts': "import type { X } from '../http/context';\n",
      'routes/chat.ts': "import { s } from '../memory/scope';\nimport { E } from '../errors';\n",
    });
    expect(result).toEqual({ code: 0, output: expect.stringMatching(/4 files/) });
  });

  it('fails on an upward import, type-only ones included', () => {
    const result = check({
      'http/context.ts': "import type { MemoryScope } from '../memory/types';\n",
      'memory/types.ts': 'export interface MemoryScope { userId: string }\n',
    });
    expect(result.code).toBe(1);
    expect(result.output).toMatch(/http\/context\.ts: imports memory\/types\.ts, a higher layer/);
  });

  it('fails on an import between sibling modules (memory and proxy)', () => {
    const result = check({
      'memory/chat-memory.ts': "import type { CapturedReply } from '../proxy/capture';\n",
      'proxy/capture.ts': 'export interface CapturedReply { text: string }\n',
    });
    expect(result.code).toBe(1);
    expect(result.output).toMatch(/sibling module \(memory → proxy\)/);
  });

  it('fails on an import cycle inside one layer, and on a file in no layer', () => {
    const result = check({
      'memory/a.ts': "import { b } from './b';\n",
      'memory/b.ts': "import { a } from './a';\n",
      'stray.ts': 'export {};\n',
    });
    expect(result.code).toBe(1);
    expect(result.output).toMatch(/import cycle: memory\/a\.ts → memory\/b\.ts → memory\/a\.ts/);
    expect(result.output).toMatch(/stray\.ts: in no layer/);
  });

  it('ignores imports in comments', () => {
    const result = check({ 'http/context.ts': "// import { x } from '../routes/chat';\n/* import { y } from '../memory/types'; */\n" });
    expect(result.code).toBe(0);
  });
});
