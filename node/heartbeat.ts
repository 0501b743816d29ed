// Liveness and capabilities on gossip: a heartbeat every interval (load, ready models, the
// capabilities version) and the capabilities record whenever it changes and now and then.
import {
  type Capabilities,
  CapabilitiesSchema,
  type Heartbeat,
  HeartbeatSchema,
  type Load,
} from '../protocols/index.ts'
import type { GossipBus } from '../src/mesh/gossip.ts'

/** Capabilities are re-gossiped every this many heartbeats, for peers that joined late. */
const CAPABILITIES_EVERY = 10

export interface HeartbeatOptions {
  bus: GossipBus
  peerId: string
  incarnation: number
  intervalMs: number
  load: () => Load
  readyModels: () => string[]
  capabilities: () => Capabilities
}

export class HeartbeatPublisher {
  private seq = 0
  private timer: NodeJS.Timeout | undefined
  private lastCapabilitiesVersion = -1

  constructor(private readonly options: HeartbeatOptions) {}

  private offSubscriber: (() => void) | undefined
  private soon: NodeJS.Timeout | undefined

  start(): void {
    const beat = (): void => {
      void this.beat().catch(() => undefined)
    }
    beat()
    this.timer = setInterval(beat, this.options.intervalMs)
    // A peer that just subscribed (a new gateway, or one we just dialled) hears from us at once
    // rather than after a whole interval; the short delay lets its side of the mesh form.
    this.offSubscriber = this.options.bus.onSubscriber('heartbeat', () => {
      if (this.soon != null || this.timer == null) return
      this.soon = setTimeout(() => {
        this.soon = undefined
        beat()
      }, 100)
    })
  }

  /** Publishes one heartbeat now (and the capabilities record when it is due). */
  async beat(state: Heartbeat['state'] = 'serving'): Promise<void> {
    const caps = this.options.capabilities()
    const hb: Heartbeat = {
      v: 1,
      peerId: this.options.peerId,
      incarnation: this.options.incarnation,
      seq: this.seq++,
      sentAt: Date.now(),
      intervalMs: this.options.intervalMs,
      state,
      load: this.options.load(),
      capabilitiesVersion: caps.version,
      models: state === 'serving' ? this.options.readyModels() : [],
    }
    await this.options.bus.publish('heartbeat', HeartbeatSchema, hb)
    if (state === 'serving' && (caps.version !== this.lastCapabilitiesVersion || hb.seq % CAPABILITIES_EVERY === 0)) {
      this.lastCapabilitiesVersion = caps.version
      await this.options.bus.publish('capabilities', CapabilitiesSchema, caps)
    }
  }

  /** Stops beating and tells the mesh this run is leaving, so directories drop it at once. */
  async stop(): Promise<void> {
    clearInterval(this.timer)
    clearTimeout(this.soon)
    this.offSubscriber?.()
    this.timer = undefined
    await this.beat('leaving').catch(() => undefined)
  }
}
