// The events a gateway sends to monitors on its admin WebSocket (/ws/admin), and the messages a
// monitor sends. Each event has a type, a unique id, an ISO timestamp and its payload; all of them
// come from gossip, so any gateway shows the whole mesh.
import { z } from 'zod'
import { EndpointSchema, LoadSchema, UsageSchema } from './schemas.ts'

const base = { id: z.string(), timestamp: z.string() }
const nodeId = z.string()

export const AdminEventSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('node:heartbeat'),
    ...base,
    nodeId,
    incarnation: z.number(),
    models: z.array(z.string()),
    load: LoadSchema,
  }),
  z.object({ type: z.literal('node:joined'), ...base, nodeId, incarnation: z.number(), models: z.array(z.string()) }),
  z.object({
    type: z.literal('node:left'),
    ...base,
    nodeId,
    incarnation: z.number(),
    reason: z.enum(['expired', 'leaving', 'restarted']),
  }),
  z.object({
    type: z.literal('inference:complete'),
    ...base,
    requestId: z.string(),
    model: z.string(),
    nodeId,
    /** The gateway that served the request (its peer id). */
    gateway: z.string(),
    tokens: UsageSchema,
    finishReason: z.string(),
    ttftMs: z.number(),
    latencyMs: z.number(),
    payer: z.enum(['api_key', 'x402', 'unknown']),
    /** Set when an external provider served it. */
    provider: z.string().optional(),
    endpoint: EndpointSchema.optional(),
  }),
  z.object({
    /** A routing candidate (a mesh node or a provider) failed and is tried last for a while. Local to the gateway that saw it. */
    type: z.literal('route:cooldown'),
    ...base,
    gateway: z.string(),
    candidate: z.string(),
    provider: z.string(),
    model: z.string(),
    reason: z.string(),
    failures: z.number(),
    cooldownMs: z.number(),
  }),
  z.object({
    type: z.enum(['model:deployed', 'model:undeployed']),
    ...base,
    modelId: z.string(),
    cid: z.string().optional(),
    version: z.number().optional(),
    nodeId,
  }),
])
export type AdminEvent = z.infer<typeof AdminEventSchema>
export type AdminEventType = AdminEvent['type']

export const ADMIN_EVENT_TYPES: readonly AdminEventType[] = [
  'node:heartbeat',
  'node:joined',
  'node:left',
  'inference:complete',
  'model:deployed',
  'model:undeployed',
  'route:cooldown',
]

/** What a monitor sends: its key first, then (optionally) which event types it wants. */
export const AdminClientMessageSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('auth'), token: z.string().max(256) }),
  z.object({
    type: z.literal('filter'),
    events: z.array(z.enum(ADMIN_EVENT_TYPES as [AdminEventType, ...AdminEventType[]])).max(16),
  }),
])
export type AdminClientMessage = z.infer<typeof AdminClientMessageSchema>

/** Close codes of the admin socket. 1008 is the WebSocket policy-violation code. */
export const ADMIN_CLOSE = {
  /** Missing, wrong or non-admin token, no auth in time, or a malformed message. */
  policy: 1008,
  /** Too many connections for this key. */
  tooMany: 4029,
  /** The monitor did not keep up: its unsent events passed the bound. */
  tooSlow: 4008,
  /** The gateway is stopping. */
  goingAway: 1001,
} as const
