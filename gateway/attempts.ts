// Trying a route plan's candidates in order until one answers, for every endpoint: each attempt is
// counted in flight, a candidate at fault is cooled down, and when none is left the most telling
// error is given — a provider's 4xx/429 with its real status; the only (or pinned) candidate's own
// error; else the documented 503 naming what was tried.
import { ApiError, noNodes } from './errors.ts'
import type { Failure } from './providers/upstream-call.ts'
import type { RoutePlan, Routing, Scored } from './routing.ts'

export type Attempt<T> =
  | { value: T }
  /** A provider did not answer (or answered an error). */
  | { failure: Failure }
  /** A mesh node did not answer; `fatal`: the request itself is at fault (no failover). */
  | { nodeOutcome: string; fatal?: ApiError | undefined }

export interface Tried {
  key: string
  outcome: string
}

export interface Answered<T> {
  value: T
  scored: Scored
  tried: Tried[]
  /** When the answering attempt started. */
  t0: number
  /** Ends the in-flight count of the answering candidate (call when its work is over). */
  end: () => void
}

export const clientClosed = (): ApiError =>
  new ApiError(400, 'The client closed the request.', 'invalid_request_error', 'client_closed')

export async function tryCandidates<T>(
  routing: Routing,
  plan: RoutePlan,
  model: string,
  signal: AbortSignal,
  attempt: (scored: Scored) => Promise<Attempt<T>>,
): Promise<Answered<T>> {
  const tried: Tried[] = []
  const failures: Array<{ failure: Failure; provider: string } | undefined> = []
  for (const scored of plan.ordered) {
    if (signal.aborted) throw clientClosed()
    const { candidate } = scored
    const end = routing.begin(candidate, model)
    const t0 = performance.now()
    let result: Attempt<T>
    try {
      result = await attempt(scored)
    } catch (err) {
      end()
      throw err
    }
    if ('value' in result) return { value: result.value, scored, tried, t0, end }
    end()
    if (signal.aborted) throw clientClosed()
    if ('nodeOutcome' in result) {
      if (result.fatal) throw result.fatal
      // A busy node is healthy, only full: not cooled down.
      if (result.nodeOutcome !== 'busy') routing.failure(candidate, model, result.nodeOutcome)
      tried.push({ key: candidate.key, outcome: result.nodeOutcome })
      failures.push(undefined)
      continue
    }
    if (result.failure.providerFault) routing.failure(candidate, model, result.failure.outcome)
    tried.push({ key: candidate.key, outcome: result.failure.outcome })
    failures.push({ failure: result.failure, provider: candidate.provider })
  }
  throw withRoute(exhausted(plan, model, tried, failures), routing.describeFailure(plan, tried))
}

/** The error to answer when no candidate answered. */
function exhausted(
  plan: RoutePlan,
  model: string,
  tried: Tried[],
  failures: Array<{ failure: Failure; provider: string } | undefined>,
): ApiError {
  // A provider's own answer passed on says which provider gave it.
  const from = (f: { failure: Failure; provider: string }): ApiError => {
    f.failure.error.headers['x-cluster-provider'] = f.provider
    return f.failure.error
  }
  const passOn = failures.find((f) => f != null && f.failure.error.status < 500)
  if (passOn != null) return from(passOn)
  // One candidate, or one pinned provider: its own error says most.
  const last = failures.at(-1)
  if ((plan.mode === 'pinned' || failures.length === 1) && last != null) return from(last)
  const allBusy = tried.length > 0 && tried.every((t) => t.outcome === 'busy')
  return noNodes(
    model,
    allBusy
      ? `All ${tried.length} node(s) serving it are at capacity.`
      : `${tried.length} candidate(s) were tried and failed (${tried.map((t) => `${t.key}: ${t.outcome}`).join(', ')}).`,
  )
}

/** Even an answer no candidate could give says where the request went. */
function withRoute(err: ApiError, route: string): ApiError {
  err.headers['x-cluster-route'] = route
  return err
}
