/**
 * `GET /livez` and `GET /readyz`: what orchestrators (the kubelet, load balancers) probe.
 *
 * `/livez` answers whenever the event loop does: it depends on nothing else, so a memory engine,
 * Redis or upstream outage never gets a healthy process restarted. `/readyz` says whether this
 * instance should receive traffic now: not once shutdown has begun (the load balancer stops
 * sending while in-flight requests drain), and not when it cannot forward anything (callers
 * authenticate, so their own keys never travel upstream, and the proxy has no upstream key of its
 * own). Memory is not a reason: the chat path fails open, so chats pass through without it.
 * Neither does Redis count: it is shared by every instance, so it would take them all out of
 * service at once, and the rate limits have their own failure policy (`RATE_LIMIT_FAIL_CLOSED`).
 *
 * Both are served before authentication (a probe carries no bearer token) and outside the
 * per-caller rate limits, so they must stay cheap and say nothing secret: no memory call, no I/O,
 * no version, no key names.
 */
import type { RequestHandler } from 'express';

/** Why an instance should not receive traffic now. */
export type NotReadyReason = 'shutting_down' | 'no_upstream_key';

/** The process's side of readiness: set by `index.ts` when shutdown begins. */
export class Readiness {
  private draining = false;

  /** Shutdown has begun (SIGTERM): `/readyz` answers 503 from now on. */
  beginShutdown(): void {
    this.draining = true;
  }

  get shuttingDown(): boolean {
    return this.draining;
  }
}

export interface ReadinessInputs {
  /** Absent: the instance never reports shutting down (an app without a process, in tests). */
  readiness?: Readiness | undefined;
  /** Whether callers must present a credential (read per request: a SIGHUP can turn it on). */
  authRequired: () => boolean;
  /** Whether the proxy has an upstream key of its own for at least one API (OpenAI's or Anthropic's). */
  hasUpstreamKey: boolean;
}

/** The reasons this instance is not ready, in a fixed order; empty when it is. */
export function notReadyReasons(inputs: ReadinessInputs): NotReadyReason[] {
  const reasons: NotReadyReason[] = [];
  if (inputs.readiness?.shuttingDown) reasons.push('shutting_down');
  // In development mode the caller's own key is forwarded, so the proxy can forward without one.
  if (inputs.authRequired() && !inputs.hasUpstreamKey) reasons.push('no_upstream_key');
  return reasons;
}

export function probeRoutes(inputs: ReadinessInputs): { livez: RequestHandler; readyz: RequestHandler } {
  return {
    livez: (_req, res) => {
      res.set('Cache-Control', 'no-store').json({ status: 'alive' });
    },
    readyz: (_req, res) => {
      const reasons = notReadyReasons(inputs);
      res.set('Cache-Control', 'no-store');
      if (reasons.length === 0) res.json({ status: 'ready' });
      else res.status(503).json({ status: 'not_ready', reasons });
    },
  };
}
