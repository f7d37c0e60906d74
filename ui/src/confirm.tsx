// The in-page confirmation dialog (a native <dialog> opened with showModal(); never window.confirm).
// With `requireText`, the OK button stays disabled until that exact text is typed.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';

export interface ConfirmRequest {
  title: string;
  text: ComponentChildren;
  okLabel: string;
  /** Text the person must type before OK is enabled (the user id for "Delete all"). */
  requireText?: string;
  onConfirm: () => void;
}

export function ConfirmDialog({ request, onClose }: { request: ConfirmRequest; onClose: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  const input = useRef<HTMLInputElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  const [typed, setTyped] = useState('');

  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (!dialog.open) dialog.showModal();
    (request.requireText !== undefined ? input.current : cancel.current)?.focus();
    return () => {
      if (dialog.open) dialog.close();
    };
  }, []);

  const ready = request.requireText === undefined || typed === request.requireText;
  const confirm = (e: Event) => {
    e.preventDefault();
    if (!ready) return;
    onClose();
    request.onConfirm();
  };

  return (
    <dialog
      ref={ref}
      class="confirm"
      data-testid="confirm-dialog"
      aria-labelledby="confirm-title"
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
    >
      <form onSubmit={confirm}>
        <h2 id="confirm-title">{request.title}</h2>
        <p data-testid="confirm-text">{request.text}</p>
        {request.requireText !== undefined && (
          <label class="field">
            <span>Type the user id to confirm</span>
            <input
              ref={input}
              data-testid="confirm-input"
              autoComplete="off"
              spellcheck={false}
              value={typed}
              onInput={(e) => setTyped(e.currentTarget.value)}
            />
          </label>
        )}
        <div class="actions">
          <button type="button" ref={cancel} data-testid="confirm-cancel" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="danger" data-testid="confirm-ok" disabled={!ready}>
            {request.okLabel}
          </button>
        </div>
      </form>
    </dialog>
  );
}
