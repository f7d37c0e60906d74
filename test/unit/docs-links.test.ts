/**
 * Every relative link in README.md and docs/*.md points at a file that exists, and a `#anchor`
 * points at a heading of that file (GitHub's heading ids: lower case, punctuation dropped, spaces
 * as hyphens). Links inside code are ignored; absolute URLs are not checked.
 */
import fs from 'node:fs';
import path from 'node:path';

const root = path.join(__dirname, '..', '..');
const files = [
  'README.md',
  ...fs
    .readdirSync(path.join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
  'deploy/kubernetes/README.md',
];

/** The text outside fenced code blocks and inline code spans. */
function prose(markdown: string): string {
  return markdown.replace(/^```[\s\S]*?^```/gm, '').replace(/`[^`\n]*`/g, '');
}

/** GitHub's ids for the headings of a markdown file. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const ids = new Set<string>();
  for (const line of markdown.replace(/^```[\s\S]*?^```/gm, '').split('\n')) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = (m[1] ?? '')
      .toLowerCase()
      .replace(/[^\p{L}\p{N} _-]/gu, '')
      .replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    ids.add(n === 0 ? base : `${base}-${n}`);
  }
  return ids;
}

function links(markdown: string): string[] {
  return [...prose(markdown).matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1] ?? '');
}

describe.each(files)('%s', (file) => {
  const text = fs.readFileSync(path.join(root, file), 'utf8');

  it('has only relative links that resolve', () => {
    const broken: string[] = [];
    for (const link of links(text)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(link)) continue; // http:, https:, mailto:
      const [target = '', anchor] = link.split('#');
      const resolved = target === '' ? path.join(root, file) : path.join(root, path.dirname(file), decodeURIComponent(target));
      if (!fs.existsSync(resolved)) {
        broken.push(`${link} (no such file)`);
        continue;
      }
      if (anchor !== undefined && resolved.endsWith('.md') && !anchors(fs.readFileSync(resolved, 'utf8')).has(anchor)) {
        broken.push(`${link} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });
});

it('finds the links it checks', () => {
  expect(links('see [a](docs/a.md#b) and `[c](d)`')).toEqual(['docs/a.md#b']);
  expect([...anchors('## Memory on `/v1/*` requests\n## Save queues\n## Save queues')]).toEqual([
    'memory-on-v1-requests',
    'save-queues',
    'save-queues-1',
  ]);
});
