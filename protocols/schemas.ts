// zod schemas of every message that crosses between peers: gossip payloads and inference frames.
// Peers validate what they receive against these and drop what does not parse.
import { z } from 'zod'

const peerId = z.string().min(1).max(128)
const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)
const modelId = z
  .string()
  .min(1)
  .max(256)
  .regex(/^[\w.:/@+-]+$/, 'model ids use letters, digits and . _ : / @ + -')
/** A money amount in the token's smallest unit, as a decimal string (JSON has no bigint). */
export const AmountString = z.string().regex(/^\d{1,40}$/, 'an integer amount in the smallest unit')

export const LoadSchema = z.object({
  active: count,
  queued: count,
  slots: count,
  maxQueue: count,
})
export type Load = z.infer<typeof LoadSchema>

export const HeartbeatSchema = z.object({
  v: z.literal(1),
  peerId,
  /** Grows with every start of the node: a higher one replaces the entry of an older run. */
  incarnation: count,
  seq: count,
  sentAt: count,
  intervalMs: z.number().int().min(50).max(60_000),
  state: z.enum(['serving', 'leaving']),
  load: LoadSchema,
  /** Version of the node's capabilities record; a directory that has an older one asks for it. */
  capabilitiesVersion: count,
  /** Ids of the models ready to serve, so routing does not wait for a capabilities record. */
  models: z.array(modelId).max(256),
})
export type Heartbeat = z.infer<typeof HeartbeatSchema>

export const ModelStateSchema = z.enum(['fetching', 'loading', 'ready', 'unloading', 'failed'])

export const ServedModelSchema = z.object({
  id: modelId,
  name: z.string().max(256).optional(),
  /** IPFS CID of the weights, when the model came from the mesh. */
  cid: z.string().max(128).optional(),
  /** sha256 of the GGUF file, hex, when it has been computed. */
  sha256: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional(),
  contextSize: count,
  quantization: z.string().max(32).optional(),
  architecture: z.string().max(64).optional(),
  parameters: count.optional(),
  sizeBytes: count.optional(),
  state: ModelStateSchema,
  /** Registry version, when the model was deployed from the registry. */
  version: count.optional(),
  /** Fraction of the weights fetched, while fetching (0–1). */
  progress: z.number().min(0).max(1).optional(),
  /** Why the deployment failed, when state is 'failed'. */
  error: z.string().max(1024).optional(),
  tasks: z.array(z.enum(['chat', 'completion', 'embeddings', 'rerank'])).max(8),
})
export type ServedModel = z.infer<typeof ServedModelSchema>

export const PriceSchema = z.object({
  model: modelId,
  /** Smallest token units per one million prompt tokens. */
  inputPerMillion: AmountString,
  /** Smallest token units per one million completion tokens. */
  outputPerMillion: AmountString,
})
export type Price = z.infer<typeof PriceSchema>

export const HardwareSchema = z.object({
  cpu: z.object({ model: z.string().max(256), cores: count }),
  ramBytes: count,
  gpus: z.array(z.object({ name: z.string().max(256), vramBytes: count })).max(64),
})
export type Hardware = z.infer<typeof HardwareSchema>

export const CapabilitiesSchema = z.object({
  v: z.literal(1),
  peerId,
  incarnation: count,
  version: count,
  models: z.array(ServedModelSchema).max(256),
  hardware: HardwareSchema,
  prices: z.array(PriceSchema).max(256),
  /** EVM address that receives this node's earnings; empty until the operator sets one. */
  payoutAddress: z.union([z.literal(''), z.string().regex(/^0x[0-9a-fA-F]{40}$/)]),
  /** Bytes the node offers for model weights, when its operator set it (else derived from hardware). */
  memoryForModels: count.optional(),
  /** Whether the node takes deploy requests from the mesh. */
  acceptsDeploys: z.boolean().optional(),
  software: z.object({ name: z.string().max(64), version: z.string().max(64) }),
})
export type Capabilities = z.infer<typeof CapabilitiesSchema>

export const DeploymentEventSchema = z.object({
  v: z.literal(1),
  type: z.enum(['model:deployed', 'model:undeployed']),
  peerId,
  incarnation: count,
  model: z.object({ id: modelId, cid: z.string().max(128).optional(), version: count.optional() }),
  at: count,
})
export type DeploymentEvent = z.infer<typeof DeploymentEventSchema>

export const UsageSchema = z.object({
  promptTokens: count,
  completionTokens: count,
})
export type Usage = z.infer<typeof UsageSchema>

export const FinishReasonSchema = z.enum(['stop', 'length', 'abort'])
export type FinishReason = z.infer<typeof FinishReasonSchema>

/** The inference endpoints of the HTTP API, as events and routing name them. */
export const EndpointSchema = z.enum(['chat', 'embeddings', 'rerank', 'images', 'transcriptions', 'speech'])
export type EndpointName = z.infer<typeof EndpointSchema>

const InferenceCompleteSchema = z.object({
  v: z.literal(1),
  type: z.literal('inference:complete'),
  requestId: z.string().min(1).max(128),
  model: modelId,
  nodePeerId: peerId,
  usage: UsageSchema,
  finishReason: FinishReasonSchema,
  ttftMs: count,
  durationMs: count,
  /** How the caller paid (absent from peers that predate it). */
  payer: z.enum(['api_key', 'x402']).optional(),
  /** The external provider that served it (nodePeerId is then `provider:<name>`); absent: a mesh node. */
  provider: z.string().min(1).max(64).optional(),
  /** Which endpoint (absent: chat, from peers that predate it). */
  endpoint: EndpointSchema.optional(),
  at: count,
})
export type InferenceCompleteEvent = z.infer<typeof InferenceCompleteSchema>

/** Most inference events one batch carries (a batch stays well under MAX_GOSSIP_BYTES). */
export const MAX_EVENTS_PER_BATCH = 64

/**
 * Events any peer may gossip for monitors; the sender is the signed gossip author. A busy gateway
 * sends its completed inferences in batches (one signed message for many), a quiet one one by one.
 */
export const ClusterEventSchema = z.discriminatedUnion('type', [
  InferenceCompleteSchema,
  z.object({
    v: z.literal(1),
    type: z.literal('inference:batch'),
    events: z.array(InferenceCompleteSchema).min(1).max(MAX_EVENTS_PER_BATCH),
  }),
])
export type ClusterEvent = z.infer<typeof ClusterEventSchema>

// ---- inference stream frames ----

/** The wire's limits on a chat request (the gateway checks them too, to name the field). */
export const WIRE_LIMITS = {
  messages: 10_000,
  contentChars: 2_000_000,
  maxTokens: 1_000_000,
  stopChars: 512,
} as const

export const ChatMessageSchema = z.object({
  role: z.enum(['system', 'user', 'assistant']),
  content: z.string().max(WIRE_LIMITS.contentChars),
})
export type WireChatMessage = z.infer<typeof ChatMessageSchema>

export const SamplingSchema = z.object({
  maxTokens: z.number().int().positive().max(WIRE_LIMITS.maxTokens).optional(),
  temperature: z.number().min(0).max(2).optional(),
  topP: z.number().gt(0).max(1).optional(),
  stop: z.array(z.string().min(1).max(WIRE_LIMITS.stopChars)).max(16).optional(),
  seed: z.number().int().nonnegative().max(0xffffffff).optional(),
})
export type Sampling = z.infer<typeof SamplingSchema>

export const InferenceRequestFrameSchema = z.object({
  type: z.literal('request'),
  id: z.string().min(1).max(128),
  model: modelId,
  messages: z.array(ChatMessageSchema).min(1).max(WIRE_LIMITS.messages),
  sampling: SamplingSchema,
  /**
   * How long the requester lets the request wait in the node's queue before its first token. A node
   * that cannot start it within this (or its own bound) refuses it as busy at once, or when the wait
   * runs out; a node that queues it says so with a queued frame. Sent only by requesters that
   * understand queued frames (older nodes ignore it; older gateways, without it, get none).
   */
  maxQueueMs: count.optional(),
})
export type InferenceRequestFrame = z.infer<typeof InferenceRequestFrameSchema>

export const DeltaFrameSchema = z.object({
  type: z.literal('delta'),
  text: z.string(),
  /** Tokens generated since the previous delta. */
  tokens: count,
  /** Prompt tokens, on the first delta: what the requester pays for even if it aborts. */
  promptTokens: count.optional(),
})
export type DeltaFrame = z.infer<typeof DeltaFrameSchema>

/**
 * What a node signs, with its peer key, for each request it served: the evidence a gateway settles
 * on chain with. The signature covers receiptPayload(receipt) (protocols/receipt.ts).
 */
export const ReceiptSchema = z.object({
  v: z.literal(1),
  requestId: z.string().min(1).max(128),
  model: modelId,
  /** sha256 of the weights, hex, when the node has computed it ('' before). */
  modelSha256: z.union([z.literal(''), z.string().regex(/^[0-9a-f]{64}$/)]),
  promptTokens: count,
  completionTokens: count,
  /** The requester (gateway) the work was done for. */
  gateway: peerId,
  /** The node that did it (its key signs). */
  node: peerId,
  issuedAt: count,
  /** base64url signature by the node's peer key. */
  signature: z.string().min(1).max(512),
})
export type Receipt = z.infer<typeof ReceiptSchema>

export const DoneFrameSchema = z.object({
  type: z.literal('done'),
  finishReason: FinishReasonSchema,
  usage: UsageSchema,
  receipt: ReceiptSchema,
})
export type DoneFrame = z.infer<typeof DoneFrameSchema>

/**
 * Sent before any delta, only to a request that carried maxQueueMs, when the node queued it instead
 * of starting it: the node is alive and will start it, or refuse it as busy, within that time.
 */
export const QueuedFrameSchema = z.object({
  type: z.literal('queued'),
  /** Requests ahead of it in the queue. */
  position: count,
  /** The node's estimate of the wait before it starts, when it has one. */
  etaMs: count.optional(),
})
export type QueuedFrame = z.infer<typeof QueuedFrameSchema>

export const InferenceErrorCodeSchema = z.enum([
  'busy',
  'model_not_found',
  'invalid_request',
  'context_length_exceeded',
  'internal',
])
export type InferenceErrorCode = z.infer<typeof InferenceErrorCodeSchema>

export const ErrorFrameSchema = z.object({
  type: z.literal('error'),
  code: InferenceErrorCodeSchema,
  message: z.string().max(4096),
  /** invalid_request: the request field it is about (as OpenAI's `param`, e.g. `dimensions`, `input`). */
  param: z.string().max(128).optional(),
})
export type ErrorFrame = z.infer<typeof ErrorFrameSchema>

/** What a node sends back on an inference stream. */
export const InferenceResponseFrameSchema = z.discriminatedUnion('type', [
  DeltaFrameSchema,
  DoneFrameSchema,
  ErrorFrameSchema,
])
export type InferenceResponseFrame = z.infer<typeof InferenceResponseFrameSchema>

/** What a requester that sent maxQueueMs may read: a queued frame may come before the first delta. */
export const InferenceReplyFrameSchema = z.discriminatedUnion('type', [
  QueuedFrameSchema,
  DeltaFrameSchema,
  DoneFrameSchema,
  ErrorFrameSchema,
])
export type InferenceReplyFrame = z.infer<typeof InferenceReplyFrameSchema>
