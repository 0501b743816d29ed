// The Directory: the live view of node peers, built from their heartbeats. Each entry holds a lease
// (a few heartbeat intervals) and the incarnation of the node's current run: no ghosts, no doubles.
import { EventEmitter } from 'node:events'
import {
  type Capabilities,
  CapabilitiesSchema,
  type DeploymentEvent,
  DeploymentEventSchema,
  type Heartbeat,
  HeartbeatSchema,
} from '../../protocols/index.ts'
import { LEASE_INTERVALS } from './constants.ts'
import type { GossipBus } from './gossip.ts'

export interface NodeEntry {
  peerId: string
  incarnation: number
  heartbeat: Heartbeat
  capabilities?: Capabilities
  /** Local clock (ms) when this incarnation was first seen. */
  joinedAt: number
  /** Local clock (ms) of the last heartbeat. */
  lastSeen: number
  /** Local clock (ms) after which the entry is dropped unless a heartbeat renews it. */
  expiresAt: number
}

export type LeaveReason = 'expired' | 'leaving' | 'restarted'

export interface DirectoryEvents {
  'node:joined': [NodeEntry]
  'node:heartbeat': [NodeEntry]
  'node:left': [{ peerId: string; incarnation: number; reason: LeaveReason }]
  'node:capabilities': [NodeEntry]
  deployment: [DeploymentEvent]
}

export interface DirectoryOptions {
  /** Fetches a node's capabilities when its heartbeat names a newer version than we hold. */
  fetchCapabilities?: (peerId: string) => Promise<Capabilities>
  /** Missed intervals before an entry expires. @default LEASE_INTERVALS */
  leaseIntervals?: number
  /** Clock, for tests. @default Date.now */
  now?: () => number
  /** How often expired entries are swept (ms). @default 100 */
  sweepMs?: number
}

/** Model names remembered as served (for 503 rather than 404); the least recently seen go first. */
export const MAX_SEEN_MODELS = 10_000

export class Directory extends EventEmitter<DirectoryEvents> {
  private readonly entries = new Map<string, NodeEntry>()
  private readonly fetching = new Set<string>()
  /** Every model id ever served by a node seen here: such a model is known even when no node has it. */
  /** Models any node was heard serving, most recently seen last; bounded (a peer may name thousands). */
  private readonly seenModels = new Map<string, true>()
  private readonly leaseIntervals: number
  private readonly now: () => number
  private sweeper: NodeJS.Timeout | undefined
  private unsubscribe: Array<() => void> = []

  constructor(private readonly options: DirectoryOptions = {}) {
    super()
    this.leaseIntervals = options.leaseIntervals ?? LEASE_INTERVALS
    this.now = options.now ?? Date.now
  }

  /** Listens on the gossip bus and starts expiring silent nodes. */
  start(bus: GossipBus): void {
    this.unsubscribe = [
      bus.subscribe('heartbeat', HeartbeatSchema, (hb, from) => {
        if (hb.peerId === from) this.handleHeartbeat(hb)
      }),
      bus.subscribe('capabilities', CapabilitiesSchema, (caps, from) => {
        if (caps.peerId === from) this.handleCapabilities(caps)
      }),
      bus.subscribe('deployments', DeploymentEventSchema, (evt, from) => {
        if (evt.peerId === from) this.emit('deployment', evt)
      }),
    ]
    const every = this.options.sweepMs ?? 100
    this.sweeper = setInterval(() => this.sweep(), every)
    this.sweeper.unref()
  }

  stop(): void {
    clearInterval(this.sweeper)
    for (const off of this.unsubscribe) off()
    this.unsubscribe = []
  }

  handleHeartbeat(hb: Heartbeat): void {
    const now = this.now()
    const current = this.entries.get(hb.peerId)
    if (current != null && hb.incarnation < current.incarnation) return // a late message of an old run
    if (current != null && hb.incarnation === current.incarnation && hb.seq < current.heartbeat.seq) return
    if (hb.state === 'leaving') {
      // Leaving from this run or a newer one: either way the entry we hold is over.
      if (current != null) this.remove(current, 'leaving')
      return
    }
    const expiresAt = now + hb.intervalMs * this.leaseIntervals
    for (const m of hb.models) this.sawModel(m)
    if (current != null && hb.incarnation === current.incarnation) {
      current.heartbeat = hb
      current.lastSeen = now
      current.expiresAt = expiresAt
      this.emit('node:heartbeat', current)
      this.maybeFetchCapabilities(current)
      return
    }
    if (current != null) this.remove(current, 'restarted')
    const entry: NodeEntry = {
      peerId: hb.peerId,
      incarnation: hb.incarnation,
      heartbeat: hb,
      joinedAt: now,
      lastSeen: now,
      expiresAt,
    }
    this.entries.set(hb.peerId, entry)
    this.emit('node:joined', entry)
    this.emit('node:heartbeat', entry)
    this.maybeFetchCapabilities(entry)
  }

  handleCapabilities(caps: Capabilities): void {
    const entry = this.entries.get(caps.peerId)
    if (entry == null || entry.incarnation !== caps.incarnation) return
    if (entry.capabilities != null && entry.capabilities.version >= caps.version) return
    entry.capabilities = caps
    for (const m of caps.models) this.sawModel(m.id)
    this.emit('node:capabilities', entry)
  }

  /** Drops every entry whose lease has run out. */
  sweep(now = this.now()): void {
    for (const entry of [...this.entries.values()]) {
      if (entry.expiresAt <= now) this.remove(entry, 'expired')
    }
  }

  get(peerId: string): NodeEntry | undefined {
    return this.entries.get(peerId)
  }

  nodes(): NodeEntry[] {
    return [...this.entries.values()]
  }

  /** Nodes whose last heartbeat lists `model` as ready. */
  nodesServing(model: string): NodeEntry[] {
    return this.nodes().filter((n) => n.heartbeat.models.includes(model))
  }

  /** Models served right now, each with the nodes serving it. */
  models(): Map<string, NodeEntry[]> {
    const out = new Map<string, NodeEntry[]>()
    for (const n of this.entries.values()) {
      for (const m of n.heartbeat.models) {
        const list = out.get(m) ?? []
        list.push(n)
        out.set(m, list)
      }
    }
    return out
  }

  /** Whether any node has ever served `model` while this directory watched. */
  private sawModel(model: string): void {
    this.seenModels.delete(model)
    this.seenModels.set(model, true)
    if (this.seenModels.size > MAX_SEEN_MODELS) {
      const oldest = this.seenModels.keys().next().value
      if (oldest !== undefined) this.seenModels.delete(oldest)
    }
  }

  knowsModel(model: string): boolean {
    return this.seenModels.has(model)
  }

  private remove(entry: NodeEntry, reason: LeaveReason): void {
    if (this.entries.get(entry.peerId) !== entry) return
    this.entries.delete(entry.peerId)
    this.emit('node:left', { peerId: entry.peerId, incarnation: entry.incarnation, reason })
  }

  private maybeFetchCapabilities(entry: NodeEntry): void {
    const fetch = this.options.fetchCapabilities
    if (fetch == null) return
    const have = entry.capabilities?.version ?? -1
    if (entry.heartbeat.capabilitiesVersion <= have || this.fetching.has(entry.peerId)) return
    this.fetching.add(entry.peerId)
    fetch(entry.peerId)
      .then((caps) => {
        if (caps.peerId === entry.peerId) this.handleCapabilities(caps)
      })
      .catch(() => {
        // The next heartbeat asks again.
      })
      .finally(() => this.fetching.delete(entry.peerId))
  }
}
