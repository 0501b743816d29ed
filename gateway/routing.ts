// Where a request goes. Candidates are the mesh nodes serving the model (and the task) and the
// enabled providers listing it; `provider` pins one (the mesh is "mesh"). Each candidate is scored
// from what this gateway measured of it — time to first token, tokens per second, error rate —
// its load now and its price; the best is tried first and the next ones on a failure before the
// first token. A candidate that fails is cooled down for a while (longer each time in a row) and
// tried only after the others; monitors see it on /ws/admin. Measurements are kept per candidate
// and model.
import { DEFAULT_HEARTBEAT_INTERVAL_MS } from '../src/mesh/constants.ts'
import type { Directory, NodeEntry } from '../src/mesh/directory.ts'
import type { TokenPrice } from '../src/payments/money.ts'
import { ApiError, invalidRequest, modelNotFound, noNodes } from './errors.ts'
import { type Endpoint, MESH_PROVIDER, PROVIDER_NAMES } from './providers/catalog.ts'
import type { Provider } from './providers/provider.ts'

/** Three heartbeat intervals: every node that is up has been heard from by then. */
export const STARTUP_GRACE_MS = 3 * DEFAULT_HEARTBEAT_INTERVAL_MS

/**
 * The start-up grace of a gateway: from its start for `graceMs`, but no longer than one heartbeat
 * interval after the first heartbeat it hears (it has joined the gossip mesh then: every node's next
 * one arrives within an interval). Meanwhile a model nobody has been heard serving may still be served.
 */
export class StartupGrace {
  private until: number

  constructor(
    directory: Pick<Directory, 'once'>,
    graceMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.until = now() + graceMs
    if (graceMs > 0) {
      directory.once('node:heartbeat', (entry) => {
        this.until = Math.min(this.until, this.now() + entry.heartbeat.intervalMs)
      })
    }
  }

  get active(): boolean {
    return this.now() < this.until
  }
}

/** Said of a model unknown while the gateway may not have heard from every node yet. */
export const NOT_HEARD_YET = 'No node serving it has been heard from yet since the gateway started.'

export type Task = 'chat' | 'embeddings' | 'rerank'

export type Candidate =
  | { kind: 'node'; key: string; provider: typeof MESH_PROVIDER; node: NodeEntry }
  | { kind: 'provider'; key: string; provider: string; upstream: Provider; upstreamModel: string }

export interface Scored {
  candidate: Candidate
  /** Expected milliseconds to the answer (lower is better); 0 while unmeasured (tried first). */
  score: number
  cooling: boolean
  measured: boolean
}

export interface RoutePlan {
  mode: 'auto' | 'pinned'
  ordered: Scored[]
}

export interface CooldownEvent {
  candidate: string
  provider: string
  model: string
  reason: string
  failures: number
  cooldownMs: number
}

export interface RoutingOptions {
  /** Cool-down after a first failure; doubles with each failure in a row. @default 5000 */
  cooldownBaseMs?: number | undefined
  /** @default 60000 */
  cooldownMaxMs?: number | undefined
  /** Milliseconds of score per dollar per million output tokens: how much price weighs. @default 20 */
  priceWeightMs?: number | undefined
  /** Measurements older than this are forgotten (the candidate is explored again). @default 300000 */
  staleMs?: number | undefined
  /**
   * After the gateway starts, a model no node has been heard serving yet may still be served by a
   * node whose first heartbeat is on its way: for this long it is answered 503, not 404.
   * @default STARTUP_GRACE_MS (three heartbeat intervals)
   */
  startupGraceMs?: number | undefined
  now?: (() => number) | undefined
}

/** What `provider` may name: the mesh, then the catalog. */
const PROVIDER_CHOICES: readonly string[] = [MESH_PROVIDER, ...PROVIDER_NAMES]

/** How fast the averages follow new measurements. */
const ALPHA = 0.3
/** Completion tokens assumed for a chat answer when comparing speeds. */
const EXPECTED_TOKENS = 128
/** Concurrency beyond which a provider's score grows with our own requests in flight. */
const PROVIDER_PARALLELISM = 32

class Stats {
  ttftMs = 0
  tokensPerSecond = 0
  errorRate = 0
  samples = 0
  lastAt = 0
  inflight = 0
  failuresInRow = 0
  coolUntil = 0
}

export class Routing {
  private readonly stats = new Map<string, Stats>()
  private readonly cooldownBaseMs: number
  private readonly cooldownMaxMs: number
  private readonly priceWeightMs: number
  private readonly staleMs: number
  private readonly now: () => number
  private readonly grace: StartupGrace

  constructor(
    private readonly directory: Directory,
    private readonly providers: readonly Provider[],
    private readonly meshPrice: (model: string) => TokenPrice,
    private readonly onCooldown: (event: CooldownEvent) => void = () => undefined,
    options: RoutingOptions = {},
  ) {
    this.cooldownBaseMs = options.cooldownBaseMs ?? 5_000
    this.cooldownMaxMs = options.cooldownMaxMs ?? 60_000
    this.priceWeightMs = options.priceWeightMs ?? 20
    this.staleMs = options.staleMs ?? 300_000
    this.now = options.now ?? Date.now
    this.grace = new StartupGrace(directory, options.startupGraceMs ?? STARTUP_GRACE_MS, this.now)
  }

  /** The names `provider` accepts, mesh first. */
  providerNames(): readonly string[] {
    return PROVIDER_CHOICES
  }

  /** Every model an enabled provider lists (for GET /v1/models). */
  providerModelIds(): Set<string> {
    return new Set(this.providers.flatMap((p) => p.modelIds()))
  }

  /** The enabled providers listing `model`, in the catalog's order. */
  providersOf(model: string): string[] {
    return this.providers.filter((p) => p.lists(model)).map((p) => p.name)
  }

  private nodesFor(model: string, task: Task): NodeEntry[] {
    return this.directory.nodesServing(model).filter((n) => {
      const served = n.capabilities?.models.find((m) => m.id === model)
      // Before its capabilities arrive a node is known only by its heartbeat: chat is what every model does.
      if (served == null) return task === 'chat'
      return served.tasks.includes(task)
    })
  }

  /**
   * The candidates for `model` on `endpoint`, best first. Throws the documented errors: an unknown
   * provider (400, listing the valid ones), a pinned provider that is not enabled or cannot serve
   * it (503 / 404), a model nobody serves (404), or one whose nodes are all gone (503).
   * `meshCannot` names what in the request the mesh's nodes cannot do (tools, images, …): no node
   * is a candidate then.
   */
  plan(model: string, endpoint: Endpoint, pinned?: string, meshCannot?: string): RoutePlan {
    const task: Task | undefined =
      endpoint === 'chat' || endpoint === 'embeddings' || endpoint === 'rerank' ? endpoint : undefined
    if (pinned != null && !this.providerNames().includes(pinned)) {
      throw invalidRequest(
        `Unknown provider '${pinned}'. Valid providers: ${this.providerNames().join(', ')}.`,
        'provider',
        'invalid_provider',
      )
    }
    const candidates: Candidate[] = []
    const meshRefusal = (): ApiError =>
      invalidRequest(
        `The cluster's nodes generate plain-text chats; ${meshCannot} need a provider that supports them.`,
        pinned === MESH_PROVIDER ? 'provider' : 'model',
        'unsupported_by_mesh',
      )
    if (meshCannot != null && pinned === MESH_PROVIDER) throw meshRefusal()
    if ((pinned == null || pinned === MESH_PROVIDER) && task != null && meshCannot == null) {
      for (const node of this.nodesFor(model, task)) {
        candidates.push({ kind: 'node', key: `cluster:${node.peerId}`, provider: MESH_PROVIDER, node })
      }
    }
    for (const p of this.providers) {
      if (pinned != null && pinned !== p.name) continue
      if (!p.endpoints.has(endpoint)) continue
      const upstreamModel = p.upstreamModel(model, pinned === p.name)
      if (upstreamModel == null) continue
      candidates.push({ kind: 'provider', key: p.name, provider: p.name, upstream: p, upstreamModel })
    }
    if (candidates.length === 0) {
      if (meshCannot != null && pinned == null && task != null && this.nodesFor(model, task).length > 0) {
        throw meshRefusal()
      }
      throw this.nothingFor(model, endpoint, pinned, task)
    }
    const ordered = candidates
      .map((candidate) => this.score(candidate, model, endpoint))
      .sort(
        (a, b) =>
          Number(a.cooling) - Number(b.cooling) ||
          a.score - b.score ||
          // Unmeasured ties: the mesh first, then the catalog's order.
          rank(a.candidate) - rank(b.candidate) ||
          a.candidate.key.localeCompare(b.candidate.key),
      )
    return { mode: pinned == null ? 'auto' : 'pinned', ordered }
  }

  private nothingFor(model: string, endpoint: Endpoint, pinned: string | undefined, task: Task | undefined): ApiError {
    if (pinned === MESH_PROVIDER) {
      if (task == null) {
        return invalidRequest(`The mesh does not serve ${endpoint}; pin a provider that does.`, 'provider')
      }
      return this.meshMissing(model, endpoint, task)
    }
    if (pinned != null) {
      const enabled = this.providers.find((p) => p.name === pinned)
      if (enabled == null) {
        return new ApiError(
          503,
          `The provider '${pinned}' is not available on this gateway (no key configured). Enabled: ${[MESH_PROVIDER, ...this.providers.map((p) => p.name)].join(', ')}.`,
          'service_unavailable_error',
          'provider_unavailable',
        )
      }
      return invalidRequest(`The provider '${pinned}' does not serve ${endpoint}.`, 'provider', 'unsupported_endpoint')
    }
    return this.meshMissing(model, endpoint, task)
  }

  /** No mesh node can take it: the model lacks the task (400), its nodes are gone (503), or nobody has it (404). */
  private meshMissing(model: string, endpoint: Endpoint, task: Task | undefined): ApiError {
    if (task != null && task !== 'chat' && this.directory.nodesServing(model).length > 0) {
      return invalidRequest(
        `The model '${model}' does not support ${endpoint} on this cluster.`,
        'model',
        'unsupported_endpoint',
      )
    }
    if (task != null && this.directory.knowsModel(model)) return noNodes(model)
    // Just after a start the directory knows only the nodes heard from so far: an unknown model may
    // be served by one not heard from yet (StartupGrace). A 404 would be taken as final (SDKs do not retry it).
    if (task != null && this.grace.active) return noNodes(model, NOT_HEARD_YET)
    return modelNotFound(model)
  }

  private statsOf(key: string): Stats {
    let s = this.stats.get(key)
    if (s == null) {
      if (this.stats.size >= this.pruneAt) this.prune()
      s = new Stats()
      this.stats.set(key, s)
    }
    return s
  }

  /** Forgets candidates not measured for a long while (nodes come and go; their entries must not pile up). */
  private prune(): void {
    const now = this.now()
    for (const [key, s] of this.stats) {
      if (s.inflight === 0 && s.coolUntil <= now && now - s.lastAt > 2 * this.staleMs) this.stats.delete(key)
    }
    this.pruneAt = Math.max(1024, this.stats.size * 2)
  }

  /** Entries kept before the next prune. */
  private pruneAt = 1024

  /** How many candidate/model pairs are measured now (for tests). */
  get measuredCount(): number {
    return this.stats.size
  }

  private score(candidate: Candidate, model: string, endpoint: Endpoint): Scored {
    const s = this.statsOf(statsKey(candidate, model))
    const now = this.now()
    const cooling = s.coolUntil > now
    const measured = s.samples > 0 && now - s.lastAt < this.staleMs
    const price = candidate.kind === 'node' ? this.meshPrice(model) : candidate.upstream.price
    const priceMs = (Number(price.outputPerMillion) / 1e6) * this.priceWeightMs
    if (!measured) return { candidate, score: priceMs / 1000, cooling, measured }
    const generation = endpoint === 'chat' && s.tokensPerSecond > 0 ? (EXPECTED_TOKENS / s.tokensPerSecond) * 1000 : 0
    let load: number
    if (candidate.kind === 'node') {
      const { active, queued, slots } = candidate.node.heartbeat.load
      load = (Math.max(active, s.inflight) + queued) / Math.max(1, slots)
    } else {
      load = s.inflight / PROVIDER_PARALLELISM
    }
    const score = (s.ttftMs + generation) * (1 + load) * (1 + 4 * s.errorRate) + priceMs
    return { candidate, score, cooling, measured }
  }

  /** Counts a request in flight on a candidate until the returned function is called. */
  begin(candidate: Candidate, model: string): () => void {
    const s = this.statsOf(statsKey(candidate, model))
    s.inflight++
    let done = false
    return () => {
      if (done) return
      done = true
      s.inflight--
    }
  }

  /** A candidate answered: its time to first token, and tokens/s when it streamed tokens. */
  success(candidate: Candidate, model: string, m: { ttftMs: number; tokens?: number; generationMs?: number }): void {
    const s = this.statsOf(statsKey(candidate, model))
    const first = s.samples === 0 || this.now() - s.lastAt >= this.staleMs
    s.ttftMs = first ? m.ttftMs : s.ttftMs + ALPHA * (m.ttftMs - s.ttftMs)
    if (m.tokens != null && m.tokens > 1 && m.generationMs != null && m.generationMs > 0) {
      const tps = (m.tokens - 1) / (m.generationMs / 1000)
      s.tokensPerSecond = s.tokensPerSecond === 0 ? tps : s.tokensPerSecond + ALPHA * (tps - s.tokensPerSecond)
    }
    s.errorRate = first ? 0 : s.errorRate * (1 - ALPHA)
    s.samples++
    s.lastAt = this.now()
    s.failuresInRow = 0
    s.coolUntil = 0
  }

  /** A candidate failed before answering: counted, and cooled down. */
  failure(candidate: Candidate, model: string, reason: string): void {
    const s = this.statsOf(statsKey(candidate, model))
    s.errorRate = s.errorRate + ALPHA * (1 - s.errorRate)
    s.samples++
    s.lastAt = this.now()
    s.failuresInRow++
    const cooldownMs = Math.min(this.cooldownMaxMs, this.cooldownBaseMs * 2 ** (s.failuresInRow - 1))
    s.coolUntil = this.now() + cooldownMs
    this.onCooldown({
      candidate: candidate.key,
      provider: candidate.provider,
      model,
      reason,
      failures: s.failuresInRow,
      cooldownMs,
    })
  }

  /** The x-cluster-route header of an answer no candidate could give: every one tried, and how it failed. */
  describeFailure(plan: RoutePlan, tried: Array<{ key: string; outcome: string }>): string {
    return [
      plan.mode,
      'chosen=none',
      'reason=all-failed',
      `candidates=${this.candidateList(plan)}`,
      `tried=${tried.map((t) => `${t.key}:${t.outcome}`).join(',')}`,
    ].join('; ')
  }

  private candidateList(plan: RoutePlan): string {
    return plan.ordered
      .map(
        (s) => `${s.candidate.key}=${s.cooling ? 'cooldown' : s.measured ? `${Math.round(s.score)}ms` : 'unmeasured'}`,
      )
      .join(',')
  }

  /** What the x-cluster-route header says: the mode, the winner and why, every candidate and its score. */
  describe(plan: RoutePlan, chosen: Scored, tried: Array<{ key: string; outcome: string }>): string {
    const list = this.candidateList(plan)
    let why: string
    if (plan.mode === 'pinned') why = 'pinned'
    else if (tried.length > 0) why = `failover`
    else if (plan.ordered.length === 1) why = 'only-candidate'
    else if (!chosen.measured) why = 'unmeasured-first'
    else why = 'best-score'
    const parts = [`${plan.mode}`, `chosen=${chosen.candidate.key}`, `reason=${why}`, `candidates=${list}`]
    if (tried.length > 0) parts.push(`tried=${tried.map((t) => `${t.key}:${t.outcome}`).join(',')}`)
    return parts.join('; ')
  }
}

/** Measurements are per candidate and model: a provider is fast for one model and slow for another. */
const statsKey = (c: Candidate, model: string): string => `${c.key}|${model}`

function rank(c: Candidate): number {
  if (c.kind === 'node') return -1
  return (PROVIDER_NAMES as readonly string[]).indexOf(c.provider)
}
