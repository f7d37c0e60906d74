/**
 * Jest's global setup: transpiles `src/` into `.test-build/` (esbuild, one file per source file,
 * no bundling; types are checked by `npm run typecheck`). The tests that start the proxy as a
 * child process, and the memory engine's worker threads, run that JavaScript: loading the sources
 * through tsx in every child and thread cost about a second of CPU each, and the suite starts
 * dozens. Rebuilt from scratch on every run, so it never lags behind the sources.
 *
 * It also starts making the PGlite template (test/setup/pglite-template.cjs) in the background:
 * the suites that need a PGlite wait for it while the others run.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';
import { BUILT_DIR, PGLITE_TEMPLATE, ROOT } from '../helpers/built';

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sources(full);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [full] : [];
  });
}

export default async function buildSource(): Promise<void> {
  const srcDir = path.join(ROOT, 'src');
  fs.rmSync(BUILT_DIR, { recursive: true, force: true });
  await build({
    absWorkingDir: ROOT,
    entryPoints: sources(srcDir),
    outbase: srcDir,
    outdir: BUILT_DIR,
    bundle: false,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    sourcemap: true,
    logLevel: 'warning',
  });
  const maker = spawn(process.execPath, [path.join(__dirname, 'pglite-template.cjs'), PGLITE_TEMPLATE], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '' },
    stdio: 'ignore',
  });
  maker.unref();
}
