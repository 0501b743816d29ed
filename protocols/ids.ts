// Protocol ids, gossip topics and size limits: the names and bounds of everything that crosses
// between peers. Versioned so that a peer speaking a newer wire can run beside an older one.

/** Prefix of every libp2p protocol id of ours. */
export const PROTOCOL_PREFIX = '/cluster'

/** One inference per stream: request → delta* → done | error. Closing the stream cancels. */
export const INFERENCE_PROTOCOL = '/cluster/inference/1.0.0'

/** Ask a node for its current capabilities record (used when a heartbeat names a newer version). */
export const CAPABILITIES_PROTOCOL = '/cluster/capabilities/1.0.0'

/** Registry sync: a peer that joins asks one that knows for every signed model record. */
export const REGISTRY_PROTOCOL = '/cluster/registry/1.0.0'

/** A gateway asks a node to deploy (fetch over IPFS, load, serve) or undeploy a model. */
export const DEPLOY_PROTOCOL = '/cluster/deploy/1.0.0'

/** One embeddings or rerank request per stream: request → embeddings | scores | error. Closing the stream cancels. */
export const VECTORS_PROTOCOL = '/cluster/vectors/1.0.0'

/** kad-dht protocol id: private, so our peers never join or answer the public IPFS DHT. */
export const DHT_PROTOCOL = '/cluster/kad/1.0.0'

/** Gossip topics. */
export const TOPICS = {
  heartbeat: '/cluster/heartbeat/1.0.0',
  capabilities: '/cluster/capabilities/1.0.0',
  deployments: '/cluster/deployments/1.0.0',
  events: '/cluster/events/1.0.0',
  models: '/cluster/models/1.0.0',
} as const

export type TopicName = keyof typeof TOPICS

/** Largest gossip message any peer accepts (bytes of its encoded payload). */
export const MAX_GOSSIP_BYTES = 64 * 1024

/** Largest single frame on a request stream (a long prompt fits; a runaway peer does not). */
export const MAX_FRAME_BYTES = 4 * 1024 * 1024

/** Bounds each peer declares when it registers a stream protocol. */
export const STREAM_LIMITS = {
  inference: { maxInboundStreams: 256, maxOutboundStreams: 256 },
  capabilities: { maxInboundStreams: 32, maxOutboundStreams: 32 },
  registry: { maxInboundStreams: 8, maxOutboundStreams: 8 },
  deploy: { maxInboundStreams: 16, maxOutboundStreams: 16 },
  vectors: { maxInboundStreams: 64, maxOutboundStreams: 64 },
} as const

/**
 * Largest embeddings reply (bytes of its frame): 2048 vectors of 4096 float32 dimensions, base64,
 * fit. A node refuses a request whose reply would not, before computing anything.
 */
export const MAX_VECTORS_REPLY_BYTES = 64 * 1024 * 1024

// --- Blocks (weights between peers) ---

/** Blocks of a DAG on one long-lived stream: wants in, blocks out in the same order (protocols/blocks.ts). */
export const BLOCKS_PROTOCOL = '/cluster/blocks/1.0.0'

/** Bounds the blocks protocol registers with: one stream per provider per fetching peer is what it uses. */
export const BLOCKS_STREAM_LIMITS = { maxInboundStreams: 8, maxOutboundStreams: 8 } as const
