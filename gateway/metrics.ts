// GET /metrics in Prometheus' text format (prom-client): HTTP requests by route and status, time
// to first token and total latency, tokens in and out, errors by code, the Directory (nodes, and
// each node's queue and active sequences from its heartbeats), gossip by topic, and the ledger's
// totals. One registry per gateway (several gateways can share a process, as in tests).
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { Ledger } from '../src/ledger/ledger.ts'
import type { Directory } from '../src/mesh/directory.ts'
import type { GossipBus } from '../src/mesh/gossip.ts'

/** Who may read /metrics: anyone on loopback or with an admin key (default), only admins, or anyone. */
export type MetricsAccess = 'loopback-or-admin' | 'admin' | 'public'

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

export class GatewayMetrics {
  readonly registry = new Registry()
  private readonly requests: Counter<'method' | 'route' | 'status'>
  private readonly requestSeconds: Histogram<'route'>
  private readonly ttft: Histogram<'model'>
  private readonly inferenceSeconds: Histogram<'model'>
  private readonly tokens: Counter<'model' | 'direction'>
  private readonly errors: Counter<'code'>
  private readonly served: Counter<'endpoint' | 'provider'>
  private readonly cooldowns: Counter<'provider' | 'reason'>

  constructor(deps: { directory: Directory; bus: GossipBus; ledger: Ledger }) {
    const registers = [this.registry]
    this.requests = new Counter({
      name: 'cluster_http_requests_total',
      help: 'HTTP requests answered, by method, route and status',
      labelNames: ['method', 'route', 'status'],
      registers,
    })
    this.requestSeconds = new Histogram({
      name: 'cluster_http_request_duration_seconds',
      help: 'Time to the response head (a stream: to its first byte), by route',
      labelNames: ['route'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.ttft = new Histogram({
      name: 'cluster_time_to_first_token_seconds',
      help: 'Time from the request to the first token, by model',
      labelNames: ['model'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.inferenceSeconds = new Histogram({
      name: 'cluster_inference_duration_seconds',
      help: 'Total time of an inference, by model',
      labelNames: ['model'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.tokens = new Counter({
      name: 'cluster_tokens_total',
      help: 'Tokens in (prompt) and out (completion), by model',
      labelNames: ['model', 'direction'],
      registers,
    })
    this.errors = new Counter({
      name: 'cluster_errors_total',
      help: 'Error answers, by error code',
      labelNames: ['code'],
      registers,
    })
    this.served = new Counter({
      name: 'cluster_inferences_total',
      help: 'Completed inference calls, by endpoint and by who served them (cluster = a mesh node, else the provider)',
      labelNames: ['endpoint', 'provider'],
      registers,
    })
    this.cooldowns = new Counter({
      name: 'cluster_route_cooldowns_total',
      help: 'Routing candidates cooled down after a failure, by provider (cluster = a mesh node) and reason',
      labelNames: ['provider', 'reason'],
      registers,
    })
    new Gauge({
      name: 'cluster_nodes',
      help: 'Nodes in the Directory',
      registers,
      collect() {
        this.set(deps.directory.nodes().length)
      },
    })
    new Gauge({
      name: 'cluster_node_queue_depth',
      help: 'Requests waiting on each node (from its last heartbeat)',
      labelNames: ['node'],
      registers,
      collect() {
        this.reset()
        for (const n of deps.directory.nodes()) this.set({ node: n.peerId }, n.heartbeat.load.queued)
      },
    })
    new Gauge({
      name: 'cluster_node_active_sequences',
      help: 'Sequences generating on each node (from its last heartbeat)',
      labelNames: ['node'],
      registers,
      collect() {
        this.reset()
        for (const n of deps.directory.nodes()) this.set({ node: n.peerId }, n.heartbeat.load.active)
      },
    })
    new Gauge({
      name: 'cluster_gossip_messages',
      help: 'Gossip messages by topic and kind (received, rejected, published) since start',
      labelNames: ['topic', 'kind'],
      registers,
      collect() {
        this.reset()
        for (const kind of ['received', 'rejected', 'published'] as const) {
          for (const [topic, n] of Object.entries(deps.bus.stats[kind])) this.set({ topic, kind }, n)
        }
      },
    })
    new Gauge({
      name: 'cluster_ledger_inferences',
      help: 'Inferences charged in this gateway’s ledger',
      registers,
      collect() {
        this.set(deps.ledger.totalCalls())
      },
    })
    new Gauge({
      name: 'cluster_ledger_accounts',
      help: 'Accounts in this gateway’s ledger',
      registers,
      collect() {
        this.set(deps.ledger.countAccounts())
      },
    })
    new Gauge({
      name: 'cluster_ledger_usdc_units',
      help: 'Money in the ledger, in USDC smallest units (1e-6 USD): spendable balances, held by calls in flight, charged by usage (all payers, and x402 payers alone)',
      labelNames: ['kind'],
      registers,
      collect() {
        const t = deps.ledger.moneyTotals()
        // Exact while below 2^53 units (9 billion USD); a gauge is a float.
        this.set({ kind: 'balance' }, Number(t.balance))
        this.set({ kind: 'held' }, Number(t.held))
        this.set({ kind: 'spent' }, Number(t.spent))
        this.set({ kind: 'spent_x402' }, Number(t.spentX402))
      },
    })
    new Gauge({
      name: 'cluster_x402_payments',
      help: 'x402 payments recorded by this gateway',
      registers,
      collect() {
        this.set(deps.ledger.countX402Payments())
      },
    })
  }

  request(method: string, route: string, status: number, seconds: number): void {
    this.requests.inc({ method, route, status: String(status) })
    this.requestSeconds.observe({ route }, seconds)
  }

  error(code: string): void {
    this.errors.inc({ code })
  }

  /** A routing candidate was cooled down. */
  cooldown(provider: string, reason: string): void {
    this.cooldowns.inc({ provider, reason })
  }

  inference(
    model: string,
    ttftMs: number,
    durationMs: number,
    promptTokens: number,
    completionTokens: number,
    served: { endpoint: string; provider: string } = { endpoint: 'chat', provider: 'cluster' },
  ): void {
    this.served.inc(served)
    this.ttft.observe({ model }, ttftMs / 1000)
    this.inferenceSeconds.observe({ model }, durationMs / 1000)
    this.tokens.inc({ model, direction: 'in' }, promptTokens)
    this.tokens.inc({ model, direction: 'out' }, completionTokens)
  }

  text(): Promise<string> {
    return this.registry.metrics()
  }

  get contentType(): string {
    return this.registry.contentType
  }
}
