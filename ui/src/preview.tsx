// "What would be injected?": sends a prompt to POST /preview and shows the exact memory block the
// proxy would add (as text in a <pre>) and each recalled memory with its score and whether it is in.
import { useState } from 'preact/hooks';
import { api, type Preview } from './api';
import { formatScore, text, useSession } from './common';

export function PreviewPanel({ userId }: { userId: string }) {
  const { report, clearError } = useSession();
  const [prompt, setPrompt] = useState('');
  const [agent, setAgent] = useState('');
  const [run, setRun] = useState('');
  const [result, setResult] = useState<Preview | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    if (!prompt.trim()) return;
    clearError();
    setBusy(true);
    try {
      setResult(
        await api.preview({
          user_id: userId,
          prompt,
          ...(agent.trim() ? { agent_id: agent.trim() } : {}),
          ...(run.trim() ? { run_id: run.trim() } : {}),
        }),
      );
    } catch (err) {
      report(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="panel">
      <h2>What would be injected?</h2>
      <form class="preview-form" onSubmit={submit}>
        <label class="field grow">
          <span>Prompt</span>
          <textarea
            data-testid="preview-input"
            rows={3}
            placeholder="A message this user might send…"
            value={prompt}
            onInput={(e) => setPrompt(e.currentTarget.value)}
          />
        </label>
        <div class="preview-side">
          <label class="field">
            <span>Agent (optional)</span>
            <input data-testid="preview-agent" value={agent} onInput={(e) => setAgent(e.currentTarget.value)} />
          </label>
          <label class="field">
            <span>Run (optional)</span>
            <input data-testid="preview-run" value={run} onInput={(e) => setRun(e.currentTarget.value)} />
          </label>
          <button type="submit" class="primary" data-testid="preview-submit" disabled={busy || !prompt.trim()}>
            {busy ? 'Previewing…' : 'Preview'}
          </button>
        </div>
      </form>

      {result && (
        <div class="preview-result">
          <p class="caption" data-testid="preview-summary">
            {result.injected} of {result.memories.length} recalled {result.memories.length === 1 ? 'memory' : 'memories'} injected · top_k{' '}
            {result.top_k} · threshold {result.threshold} · max {result.max_chars} chars
          </p>
          {result.block === null ? (
            <p class="empty" data-testid="preview-empty">
              Nothing would be injected
            </p>
          ) : (
            <pre class="block" data-testid="preview-block">
              {text(result.block)}
            </pre>
          )}
          {result.memories.length > 0 && (
            <table class="grid">
              <thead>
                <tr>
                  <th class="num">Score</th>
                  <th>Injected</th>
                  <th>Memory</th>
                  <th>Id</th>
                </tr>
              </thead>
              <tbody>
                {result.memories.map((m) => (
                  <tr
                    key={m.id}
                    data-testid="preview-memory"
                    data-memory-id={m.id}
                    data-injected={m.injected ? 'true' : 'false'}
                    class={m.injected ? 'injected' : undefined}
                  >
                    <td class="num" data-testid="preview-score">
                      {formatScore(m.score)}
                    </td>
                    <td>{m.injected ? 'yes' : 'no'}</td>
                    <td class="memory-cell">{text(m.memory)}</td>
                    <td class="small mono">{m.id}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
      )}
    </section>
  );
}
