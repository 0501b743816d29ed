// A node's own /metrics (Prometheus text, prom-client) on an HTTP port of its own, when the
// operator asks for one: queue depth, active sequences and tokens generated per model (rate() of
// the counter is tokens/s), and the deployments it holds by state.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Counter, Gauge, Registry } from 'prom-client'
import type { ServedModel } from '../protocols/index.ts'
import type { Engine } from './engine.ts'
import type { Scheduler } from './scheduler.ts'

export interface NodeMetricsSource {
  schedulers: () => ReadonlyMap<string, Scheduler>
  engines: () => ReadonlyMap<string, Engine>
  pending: () => ServedModel[]
}

export function nodeMetricsRegistry(src: NodeMetricsSource): Registry {
  const registry = new Registry()
  const registers = [registry]
  new Gauge({
    name: 'cluster_node_queue_depth',
    help: 'Requests waiting for a free sequence, by model',
    labelNames: ['model'],
    registers,
    collect() {
      this.reset()
      for (const [model, s] of src.schedulers()) this.set({ model }, s.load().queued)
    },
  })
  new Gauge({
    name: 'cluster_node_active_sequences',
    help: 'Sequences generating now, by model',
    labelNames: ['model'],
    registers,
    collect() {
      this.reset()
      for (const [model, s] of src.schedulers()) this.set({ model }, s.load().active)
    },
  })
  // A counter read from the engines' own totals: rate(cluster_node_tokens_generated_total[1m]) is tokens/s.
  const seen = new Map<string, number>()
  new Counter({
    name: 'cluster_node_tokens_generated_total',
    help: 'Tokens generated, by model (rate() of it is tokens/s)',
    labelNames: ['model'],
    registers,
    collect() {
      for (const [model, e] of src.engines()) {
        const before = seen.get(model) ?? 0
        if (e.generatedTokens > before) this.inc({ model }, e.generatedTokens - before)
        seen.set(model, e.generatedTokens)
      }
    },
  })
  new Gauge({
    name: 'cluster_node_deployments',
    help: 'Deployments being fetched, loaded or failed (ready ones serve)',
    labelNames: ['state'],
    registers,
    collect() {
      this.reset()
      for (const m of src.pending()) this.inc({ state: m.state })
    },
  })
  return registry
}

/** Serves the registry on host:port at /metrics; resolves with the port it listens on. */
export async function serveNodeMetrics(
  registry: Registry,
  host: string,
  port: number,
): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || new URL(req.url ?? '/', 'http://x').pathname !== '/metrics') {
      res
        .writeHead(404, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'Not found', code: 'NOT_FOUND' }))
      return
    }
    void registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      () => res.writeHead(500).end(),
    )
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, resolve)
  })
  return { server, port: (server.address() as AddressInfo).port }
}
