/**
 * The memory console in real headless Chromium (Debian's `chromium`, driven by playwright-core)
 * against the real proxy: embedded memory engine, fake upstream, a key registry with a key bound
 * to one user. Every test fails on a console error, an uncaught page error, a CSP violation or
 * any JavaScript dialog. Screenshots of the main views are taken on the way: into docs/ (the
 * README and docs/console.md show them) with CONSOLE_SCREENSHOTS=1, into a temporary folder otherwise.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import type { MemoryItem } from '../../src/memory/types';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { serve, type Served } from '../helpers/app';
import { startConsoleApp, type ConsoleApp } from '../helpers/console-app';
import { TEST_AUTH_TOKEN } from '../helpers/secrets';
import { waitFor } from '../helpers/wait';

jest.setTimeout(60_000);

const ROOT = path.resolve(__dirname, '..', '..');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SCREENSHOTS =
  process.env.CONSOLE_SCREENSHOTS === '1' ? path.join(ROOT, 'docs') : fs.mkdtempSync(path.join(os.tmpdir(), 'console-shots-'));
const XSS_IMG = '<img src=x onerror="document.title=\'pwned-img\'">';
const XSS_SCRIPT = '<script>document.title="pwned-script"</script>';

let fake: FakeUpstream;
let proxy: ConsoleApp;
let ALICE_KEY: string;
let served: Served;
let browser: Browser;

beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  proxy = await startConsoleApp(fake.url);
  ALICE_KEY = proxy.aliceKey;
  served = await serve(proxy.app.app);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await served?.close();
  await proxy?.close();
  await fake?.close();
});

/** Calls the proxy from the test (not the browser) with the admin token. */
async function api<T>(
  route: string,
  body?: object,
  extraHeaders: Record<string, string> = {},
): Promise<{ status: number; body: T; headers: http.IncomingHttpHeaders }> {
  const url = new URL(route, served.url);
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: body === undefined ? 'GET' : 'POST',
        headers: {
          Authorization: `Bearer ${TEST_AUTH_TOKEN}`,
          ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}),
          ...extraHeaders,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, body: (text === '' ? undefined : JSON.parse(text)) as T, headers: res.headers });
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

async function remember(userId: string, content: string, metadata: Record<string, unknown> = {}): Promise<MemoryItem> {
  const res = await api<{ memories: MemoryItem[] }>('/remember', { user_id: userId, content, infer: false, metadata });
  const item = res.body.memories[0];
  if (res.status !== 200 || !item) throw new Error(`remember: ${res.status}`);
  return item;
}

const memoriesOf = async (userId: string): Promise<MemoryItem[]> =>
  (await api<{ memories: MemoryItem[] }>('/list', { user_id: userId, limit: 1000 })).body.memories;

interface Watched {
  page: Page;
  context: BrowserContext;
  problems: string[];
  requests: string[];
}

let current: Watched | undefined;

/** A fresh tab that records every console error, page error, CSP violation, dialog and request. */
async function openConsole(): Promise<Watched> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  const problems: string[] = [];
  const requests: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('dialog', (d) => {
    problems.push(`dialog: ${d.type()} ${d.message()}`);
    void d.dismiss();
  });
  page.on('request', (r) => requests.push(r.url()));
  // Reported by the browser as the CSP refuses something (the init script itself is not subject to the page's CSP).
  await page.addInitScript({
    content:
      "document.addEventListener('securitypolicyviolation', (e) => console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));",
  });
  current = { page, context, problems, requests };
  return current;
}

afterEach(async () => {
  const watched = current;
  current = undefined;
  if (!watched) return;
  await watched.context.close();
  // Expected 4xx answers the page shows as banners are not console errors; anything else is.
  expect(watched.problems.filter((p) => !/Failed to load resource: the server responded with a status of 4\d\d/.test(p))).toEqual([]);
});

/** Signs in; with a good key, waits until the console is signed in (it then routes by itself). */
async function signIn(page: Page, key = TEST_AUTH_TOKEN, expectRefusal = false): Promise<void> {
  await page.goto(`${served.url}/ui/`);
  await page.getByTestId('token-input').fill(key);
  await page.getByTestId('signin-submit').click();
  if (!expectRefusal) await page.getByTestId('signout').waitFor();
}

const shot = (page: Page, name: string): Promise<Buffer> => page.screenshot({ path: path.join(SCREENSHOTS, `console-${name}.png`) });

describe('signing in', () => {
  it('refuses a bad token, then signs in with AUTH_TOKEN and lists the users', async () => {
    await remember('ui-zoe', 'Zoe writes poems');
    const { page } = await openConsole();
    await signIn(page, 'not-the-token', true);
    await page.getByTestId('signin-error').waitFor();
    expect(await page.getByTestId('signin-error').textContent()).toContain('Token refused');
    expect(await page.getByTestId('user-row').count()).toBe(0);
    await page.getByTestId('token-input').fill(TEST_AUTH_TOKEN);
    await page.getByTestId('signin-submit').click();
    await page.getByTestId('user-row').first().waitFor();
    expect(await page.getByTestId('user-link').allTextContents()).toContain('ui-zoe');
    // The token lives in this tab's session storage only: no cookie.
    expect(await page.context().cookies()).toEqual([]);
    expect(await page.evaluate("sessionStorage.getItem('mp-console-token')")).toBe(TEST_AUTH_TOKEN);
  });
});

describe('a user’s memories', () => {
  it('lists users, searches them, opens one, filters, searches memories, edits and deletes (the admin API agrees)', async () => {
    await remember('ui-ann', 'Ann keeps bees', { source: 'chat.completions', model: 'gpt-test', request_id: 'req-ann-1' });
    const edited = await remember('ui-ann', 'Ann lives in Lisbon');
    const doomed = await remember('ui-ann', 'Ann dislikes olives');
    await remember('ui-bob', 'Bob rides a bike');
    const { page } = await openConsole();
    await signIn(page);
    await page.getByTestId('user-row').first().waitFor();
    await page.getByTestId('users-search').fill('ui-a');
    await waitFor(
      async () => ((await page.getByTestId('user-link').allTextContents()).join(',') === 'ui-ann' ? true : undefined),
      5000,
      'users filtered to ui-ann',
    );
    expect(await page.getByTestId('user-count').first().textContent()).toContain('3');
    await shot(page, 'users');

    await page.getByTestId('user-link').first().click();
    await page.getByTestId('user-title').waitFor();
    expect(await page.getByTestId('user-title').textContent()).toBe('ui-ann');
    await page.getByTestId('memory-row').nth(2).waitFor();
    const row = page.locator(`[data-testid="memory-row"][data-memory-id="${edited.id}"]`);
    expect(await row.getByTestId('memory-text').textContent()).toBe('Ann lives in Lisbon');
    expect(await page.locator('[data-testid="memory-row"]').first().textContent()).toContain('req-ann-1');
    await shot(page, 'user');

    // Text filter, then semantic search with scores.
    await page.getByTestId('filter-text').fill('bees');
    await page.getByTestId('filter-apply').click();
    await waitFor(async () => ((await page.getByTestId('memory-row').count()) === 1 ? true : undefined), 5000, 'filtered list');
    expect(await page.getByTestId('memory-text').first().textContent()).toBe('Ann keeps bees');
    await page.getByTestId('filter-text').fill('');
    await page.getByTestId('filter-apply').click();
    await waitFor(async () => ((await page.getByTestId('memory-row').count()) === 3 ? true : undefined), 5000, 'unfiltered list');
    await page.getByTestId('search-input').fill('Where does Ann live? Lisbon');
    await page.getByTestId('search-submit').click();
    await page.getByTestId('memory-score').first().waitFor();
    expect(await page.getByTestId('memory-text').first().textContent()).toBe('Ann lives in Lisbon');
    await page.getByTestId('search-clear').click();
    await waitFor(async () => ((await page.getByTestId('memory-score').count()) === 0 ? true : undefined), 5000, 'back to the list');

    // Edit.
    await row.getByTestId('memory-edit').click();
    await row.getByTestId('memory-edit-input').fill('Ann lives in Porto');
    await row.getByTestId('memory-edit-save').click();
    await waitFor(
      async () => ((await row.getByTestId('memory-text').textContent()) === 'Ann lives in Porto' ? true : undefined),
      5000,
      'edited text shown',
    );
    expect((await memoriesOf('ui-ann')).find((m) => m.id === edited.id)?.memory).toBe('Ann lives in Porto');

    // Delete one, after the in-page confirmation.
    const doomedRow = page.locator(`[data-testid="memory-row"][data-memory-id="${doomed.id}"]`);
    await doomedRow.getByTestId('memory-delete').click();
    await page.getByTestId('confirm-dialog').waitFor();
    await page.getByTestId('confirm-ok').click();
    await doomedRow.waitFor({ state: 'detached' });
    expect((await memoriesOf('ui-ann')).map((m) => m.id)).not.toContain(doomed.id);
    expect(await memoriesOf('ui-bob')).toHaveLength(1);
  });

  it('deletes selected memories and then all of them, each after a confirmation that names what goes', async () => {
    const items = [];
    for (const text of ['Cy likes jazz', 'Cy likes chess', 'Cy likes tea', 'Cy likes rain']) items.push(await remember('ui-cy', text));
    const { page } = await openConsole();
    await signIn(page);
    await page.goto(`${served.url}/ui/#/users/ui-cy`);
    await page.getByTestId('memory-row').nth(3).waitFor();
    for (const item of items.slice(0, 2))
      await page.locator(`[data-testid="memory-row"][data-memory-id="${item.id}"]`).getByTestId('memory-select').check();
    await page.getByTestId('delete-selected').click();
    await page.getByTestId('confirm-dialog').waitFor();
    expect(await page.getByTestId('confirm-text').textContent()).toContain('2');
    // Cancel keeps everything.
    await page.getByTestId('confirm-cancel').click();
    expect(await memoriesOf('ui-cy')).toHaveLength(4);
    await page.getByTestId('delete-selected').click();
    await page.getByTestId('confirm-ok').click();
    await waitFor(async () => ((await page.getByTestId('memory-row').count()) === 2 ? true : undefined), 5000, 'two rows left');
    expect((await memoriesOf('ui-cy')).map((m) => m.memory).sort()).toEqual(['Cy likes rain', 'Cy likes tea']);

    await page.getByTestId('delete-all').click();
    await page.getByTestId('confirm-dialog').waitFor();
    const text = (await page.getByTestId('confirm-text').textContent()) ?? '';
    expect(text).toContain('ui-cy');
    expect(text).toContain('2');
    expect(await page.getByTestId('confirm-ok').isDisabled()).toBe(true);
    await page.getByTestId('confirm-input').fill('ui-c');
    expect(await page.getByTestId('confirm-ok').isDisabled()).toBe(true);
    await page.getByTestId('confirm-input').fill('ui-cy');
    await page.getByTestId('confirm-ok').click();
    await waitFor(async () => ((await page.getByTestId('memory-row').count()) === 0 ? true : undefined), 5000, 'no rows left');
    expect(await memoriesOf('ui-cy')).toEqual([]);
  });

  it('exports the user’s memories as a JSON file', async () => {
    for (let i = 0; i < 3; i++) await remember('ui-exp', `Exported fact ${i}`);
    const { page } = await openConsole();
    await signIn(page);
    await page.goto(`${served.url}/ui/#/users/ui-exp`);
    await page.getByTestId('memory-row').nth(2).waitFor();
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-json').click()]);
    const file = await download.path();
    const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as { user_id: string; count: number; memories: MemoryItem[] };
    expect(doc.user_id).toBe('ui-exp');
    expect(doc.count).toBe(3);
    expect(doc.memories.map((m) => m.memory).sort()).toEqual(['Exported fact 0', 'Exported fact 1', 'Exported fact 2']);
  });
});

describe('what would be injected, and the trace', () => {
  it('previews the block a chat then injects, and the trace shows that chat with its memory ids', async () => {
    await remember('ui-eve', 'Eve is allergic to peanuts');
    await remember('ui-eve', 'Eve plays the cello');
    const prompt = 'Is Eve allergic to peanuts? My brother is called Sam.';
    const { page } = await openConsole();
    await signIn(page);
    await page.goto(`${served.url}/ui/#/users/ui-eve`);
    await page.getByTestId('preview-input').fill(prompt);
    await page.getByTestId('preview-submit').click();
    await page.getByTestId('preview-block').waitFor();
    const block = (await page.getByTestId('preview-block').textContent()) ?? '';
    expect(block).toContain('Eve is allergic to peanuts');
    const injectedIds = await page
      .locator('[data-testid="preview-memory"][data-injected="true"]')
      .evaluateAll((els) => els.map((e) => e.getAttribute('data-memory-id')));
    expect(injectedIds.length).toBeGreaterThan(0);
    await shot(page, 'preview');

    fake.reset();
    const requestId = `ui-trace-${crypto.randomUUID()}`;
    const chat = await api<unknown>(
      '/v1/chat/completions',
      { model: 'gpt-test', messages: [{ role: 'user', content: prompt }] },
      { 'X-Mem0-User-Id': 'ui-eve', 'X-Request-ID': requestId },
    );
    expect(chat.status).toBe(200);
    const forwarded = fake.requestsTo('/v1/chat/completions').find((r) => !JSON.stringify(r.json).includes('Memory Extractor'));
    if (!forwarded) throw new Error('the chat was not forwarded upstream');
    const sent = (forwarded.json as { messages: { content: string }[] }).messages.map((m) => m.content);
    expect(sent).toContain(block);

    await waitFor(async () => {
      const t = await api<{ traces: { save: { status: string } }[] }>('/traces', { request_id: requestId });
      return t.body.traces[0]?.save.status === 'saved' ? true : undefined;
    });
    await page.goto(`${served.url}/ui/#/traces`);
    const trace = page.locator(`[data-testid="trace-row"][data-request-id="${requestId}"]`);
    await trace.waitFor();
    expect(await trace.getByTestId('trace-memory-id').allTextContents()).toEqual(injectedIds);
    expect(await trace.getByTestId('trace-save').textContent()).toContain('saved');
    await shot(page, 'traces');

    await page.goto(`${served.url}/ui/#/status`);
    await page.getByTestId('status-backend').waitFor();
    expect(await page.getByTestId('status-backend').textContent()).toContain('embedded');
    expect(await page.getByTestId('status-depth').textContent()).toMatch(/\d/);
    await shot(page, 'status');
  });
});

describe('hostile memory text', () => {
  it('renders markup in a memory as text: nothing runs, nothing is fetched', async () => {
    await remember('ui-mal', XSS_IMG);
    await remember('ui-mal', XSS_SCRIPT);
    const { page, requests } = await openConsole();
    await signIn(page);
    await page.goto(`${served.url}/ui/#/users/ui-mal`);
    await page.getByTestId('memory-row').nth(1).waitFor();
    expect((await page.getByTestId('memory-text').allTextContents()).sort()).toEqual([XSS_IMG, XSS_SCRIPT].sort());
    expect(await page.locator('[data-testid="memory-text"] img, [data-testid="memory-text"] script').count()).toBe(0);
    expect(await page.title()).not.toMatch(/pwned/);
    // Also as search results and in the injection preview (block and rows).
    await page.getByTestId('search-input').fill('document title pwned img script');
    await page.getByTestId('search-submit').click();
    await page.getByTestId('memory-score').first().waitFor();
    expect((await page.getByTestId('memory-text').allTextContents()).length).toBeGreaterThan(0);
    await page.getByTestId('preview-input').fill(`${XSS_IMG} ${XSS_SCRIPT}`);
    await page.getByTestId('preview-submit').click();
    await page.getByTestId('preview-block').waitFor();
    expect(await page.getByTestId('preview-block').textContent()).toContain(XSS_IMG);
    expect(await page.locator('img, script:not([src])').count()).toBe(0);
    expect(await page.title()).not.toMatch(/pwned/);
    expect(requests.filter((u) => !u.startsWith(served.url) || /\/x$/.test(u))).toEqual([]);
  });
});

describe('a key bound to one user', () => {
  it('sees only its own user: no users list, no other user’s memories', async () => {
    await remember('alice', 'Alice grows tomatoes');
    await remember('ui-other', 'Someone else entirely');
    const { page } = await openConsole();
    await signIn(page, ALICE_KEY);
    await page.getByTestId('user-title').waitFor();
    expect(await page.getByTestId('user-title').textContent()).toBe('alice');
    await page.getByTestId('memory-row').first().waitFor();
    expect(await page.getByTestId('memory-text').allTextContents()).toEqual(['Alice grows tomatoes']);
    expect(await page.getByTestId('nav-users').count()).toBe(0);
    expect(await page.getByTestId('nav-status').count()).toBe(0);
    await page.goto(`${served.url}/ui/#/users/ui-other`);
    await page.getByTestId('user-title').waitFor();
    expect(await page.getByTestId('user-title').textContent()).toBe('alice');
    expect(await page.getByText('Someone else entirely').count()).toBe(0);
  });
});
