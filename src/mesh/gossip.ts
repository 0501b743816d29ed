// A typed gossip bus over gossipsub: publish and subscribe by schema. Every message is validated
// before delivery; one that is oversized, not JSON, off-schema, or claims another peer's id is
// rejected in the validator, so gossipsub drops it, does not forward it, and scores its sender down.
import { type GossipSub, type Message, TopicValidatorResult } from '@libp2p/gossipsub'
import type { PeerId } from '@libp2p/interface'
import type { z } from 'zod'
import { decodeGossip, encodeGossip, TOPICS, type TopicName } from '../../protocols/index.ts'

export type GossipHandler<T> = (message: T, from: string) => void

interface TopicBinding {
  schema: z.ZodType
  handlers: Set<GossipHandler<unknown>>
}

export interface GossipStats {
  received: Record<string, number>
  rejected: Record<string, number>
  published: Record<string, number>
}

export class GossipBus {
  private readonly bindings = new Map<string, TopicBinding>()
  readonly stats: GossipStats = { received: {}, rejected: {}, published: {} }
  private readonly onMessage = (evt: CustomEvent<Message>): void => this.deliver(evt.detail)

  constructor(private readonly pubsub: GossipSub) {
    pubsub.addEventListener('message', this.onMessage)
  }

  /** Subscribes `handler` to `topic`; messages reach it only after passing `schema`. */
  subscribe<S extends z.ZodType>(topic: TopicName, schema: S, handler: GossipHandler<z.output<S>>): () => void {
    const name = TOPICS[topic]
    let binding = this.bindings.get(name)
    if (binding == null) {
      binding = { schema, handlers: new Set() }
      this.bindings.set(name, binding)
      this.pubsub.topicValidators.set(name, (_peer, msg) => this.validate(name, schema, msg))
      this.pubsub.subscribe(name)
    } else if (binding.schema !== schema) {
      throw new Error(`topic ${name} is already bound to another schema`)
    }
    const h = handler as GossipHandler<unknown>
    binding.handlers.add(h)
    return () => {
      binding.handlers.delete(h)
    }
  }

  /** Validates and publishes; resolves with how many peers it was sent to. */
  async publish<S extends z.ZodType>(topic: TopicName, schema: S, value: z.input<S>): Promise<number> {
    const name = TOPICS[topic]
    const bytes = encodeGossip(schema, value)
    const result = await this.pubsub.publish(name, bytes)
    this.stats.published[name] = (this.stats.published[name] ?? 0) + 1
    return result.recipients.length
  }

  /** Calls `listener` with the peer id whenever a peer newly subscribes to `topic`. */
  onSubscriber(topic: TopicName, listener: (peerId: string) => void): () => void {
    const name = TOPICS[topic]
    const handler = (
      evt: CustomEvent<{ peerId: PeerId; subscriptions: Array<{ topic: string; subscribe: boolean }> }>,
    ): void => {
      if (evt.detail.subscriptions.some((s) => s.topic === name && s.subscribe)) listener(evt.detail.peerId.toString())
    }
    this.pubsub.addEventListener('subscription-change', handler)
    return () => this.pubsub.removeEventListener('subscription-change', handler)
  }

  close(): void {
    this.pubsub.removeEventListener('message', this.onMessage)
    for (const name of this.bindings.keys()) {
      this.pubsub.topicValidators.delete(name)
      try {
        this.pubsub.unsubscribe(name)
      } catch {
        // stopping: nothing left to unsubscribe from
      }
    }
    this.bindings.clear()
  }

  private validate(topic: string, schema: z.ZodType, msg: Message): TopicValidatorResult {
    const parsed = this.parse(schema, msg)
    if (parsed === undefined) {
      this.stats.rejected[topic] = (this.stats.rejected[topic] ?? 0) + 1
      return TopicValidatorResult.Reject
    }
    return TopicValidatorResult.Accept
  }

  private parse(schema: z.ZodType, msg: Message): unknown {
    if (msg.type !== 'signed') return undefined
    let value: unknown
    try {
      value = decodeGossip(schema, msg.data)
    } catch {
      return undefined
    }
    // A message about a peer must be signed by that peer.
    const claimed = (value as { peerId?: unknown }).peerId
    if (claimed !== undefined && claimed !== msg.from.toString()) return undefined
    return value
  }

  private deliver(msg: Message): void {
    const binding = this.bindings.get(msg.topic)
    if (binding == null || msg.type !== 'signed') return
    const value = this.parse(binding.schema, msg)
    if (value === undefined) return
    this.stats.received[msg.topic] = (this.stats.received[msg.topic] ?? 0) + 1
    const from = msg.from.toString()
    for (const handler of binding.handlers) {
      try {
        handler(value, from)
      } catch {
        // A failing handler must not stop delivery to the others.
      }
    }
  }
}
