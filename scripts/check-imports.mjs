#!/usr/bin/env node
/**
 * Fails when an import in src/ runs against the layering, or when src/ has an import cycle.
 *
 * Layers, lowest first; a file may import its own layer's files (within the same module) and any
 * lower layer, never a higher one:
 *
 *   0 base     config.ts errors.ts logger.ts metrics.ts util/
 *   1 http     http/                    requests, callers, middleware
 *   2 proxy    proxy/                   forwarding and the reply tap
 *   2 memory   memory/                  the MemoryService, its backends, recall, save queues
 *   3 keys     keys/                    the key registry and the authenticator built on it
 *   3 mcp      mcp/                     the MCP server over the memory service
 *   4 routes   routes/                  thin handlers
 *   5 root     app.ts assemble.ts index.ts   composition
 *
 * Modules of one layer (proxy and memory; keys and mcp) do not import each other: what they share
 * lives below them. Type-only imports count: they are dependencies all the same.
 *
 * Usage: node scripts/check-imports.mjs [srcDir]   (exit 1 with one line per problem)
 */
import fs from 'node:fs';
import path from 'node:path';

const MODULES = [
  { name: 'base', layer: 0, test: (rel) => /^(config|errors|logger|metrics)\.ts$/.test(rel) || rel.startsWith('util/') },
  { name: 'http', layer: 1, test: (rel) => rel.startsWith('http/') },
  { name: 'proxy', layer: 2, test: (rel) => rel.startsWith('proxy/') },
  { name: 'memory', layer: 2, test: (rel) => rel.startsWith('memory/') },
  { name: 'keys', layer: 3, test: (rel) => rel.startsWith('keys/') },
  { name: 'mcp', layer: 3, test: (rel) => rel.startsWith('mcp/') },
  { name: 'routes', layer: 4, test: (rel) => rel.startsWith('routes/') },
  { name: 'root', layer: 5, test: (rel) => /^(app|assemble|index)\.ts$/.test(rel) },
];

function moduleOf(rel) {
  return MODULES.find((m) => m.test(rel));
}

function sourceFiles(dir, root = dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full, root);
    return entry.name.endsWith('.ts') ? [path.relative(root, full).split(path.sep).join('/')] : [];
  });
}

/** Relative import specifiers of a file: `import … from './x'`, `export … from './x'`, `require('./x')`, `import('./x')`. */
function importsOf(text) {
  const specs = [];
  const patterns = [
    /\b(?:import|export)\s[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /\brequire\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  for (const pattern of patterns) for (const match of code.matchAll(pattern)) if (match[1].startsWith('.')) specs.push(match[1]);
  return specs;
}

function resolve(srcDir, fromRel, spec) {
  const base = path.posix.normalize(path.posix.join(path.posix.dirname(fromRel), spec));
  for (const candidate of [`${base}.ts`, `${base}/index.ts`, base]) {
    if (candidate.endsWith('.ts') && fs.existsSync(path.join(srcDir, candidate))) return candidate;
  }
  return undefined;
}

export function checkImports(srcDir) {
  const problems = [];
  const files = sourceFiles(srcDir);
  const graph = new Map();
  for (const rel of files) {
    const from = moduleOf(rel);
    if (!from) {
      problems.push(`${rel}: in no layer (add it to scripts/check-imports.mjs)`);
      continue;
    }
    const targets = [];
    for (const spec of importsOf(fs.readFileSync(path.join(srcDir, rel), 'utf8'))) {
      const target = resolve(srcDir, rel, spec);
      if (target === undefined) continue; // not a source file (JSON, a generated asset)
      targets.push(target);
      const to = moduleOf(target);
      if (!to || to === from) continue;
      if (to.layer > from.layer)
        problems.push(`${rel}: imports ${target}, a higher layer (${from.name} ${from.layer} → ${to.name} ${to.layer})`);
      else if (to.layer === from.layer)
        problems.push(`${rel}: imports ${target}, a sibling module (${from.name} → ${to.name}): move what they share lower`);
    }
    graph.set(rel, targets);
  }
  // Cycles: depth-first search, reporting each cycle once by its smallest member.
  const state = new Map();
  const stack = [];
  const seen = new Set();
  const visit = (node) => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'open') {
        const cycle = stack.slice(stack.indexOf(next));
        const key = [...cycle].sort().join(' ');
        if (!seen.has(key)) {
          seen.add(key);
          problems.push(`import cycle: ${[...cycle, next].join(' → ')}`);
        }
      } else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node);
  return problems;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const srcDir = path.resolve(process.argv[2] ?? path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'src'));
  const problems = checkImports(srcDir);
  if (problems.length > 0) {
    process.stderr.write(
      `import check: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n${problems.map((p) => `  ${p}`).join('\n')}\n`,
    );
    process.exit(1);
  }
  process.stdout.write(`import check: ${sourceFiles(srcDir).length} files, layering holds, no cycles\n`);
}
