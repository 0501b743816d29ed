// The model registry and deployments on the wire: signed model version records (gossiped and synced
// between peers), and the deploy protocol a gateway uses to ask a node to fetch and serve a model.
import { z } from 'zod'

const peerId = z.string().min(1).max(128)
const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)

/** A registry model id: a lowercase slug (made from the uploaded name). */
export const ModelSlugSchema = z
  .string()
  .min(1)
  .max(96)
  .regex(/^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$/, 'lowercase letters, digits and . _ - (not at either end)')

/** A CID as text (base32 CIDv1 or base58 CIDv0); peers parse it fully before use. */
export const CidStringSchema = z
  .string()
  .min(10)
  .max(128)
  .regex(/^[A-Za-z0-9]+$/, 'a CID')

export const MODEL_CATEGORIES = ['chat', 'completion', 'embedding', 'rerank', 'code', 'vision', 'other'] as const
export const ModelCategorySchema = z.enum(MODEL_CATEGORIES)

/** What the GGUF header says about the weights (read by the uploading gateway). */
export const GgufFactsSchema = z.object({
  name: z.string().max(256),
  architecture: z.string().max(64),
  parameters: count,
  quantization: z.string().max(32),
  contextLength: count,
})

/**
 * One version of a model, signed by the gateway that accepted the upload (its peer key). Version 1
 * fixes the model's owner and gateway; later versions count only when they carry the same ones.
 */
export const ModelRecordSchema = z.object({
  v: z.literal(1),
  id: ModelSlugSchema,
  version: z.number().int().min(1).max(1_000_000),
  cid: CidStringSchema,
  sizeBytes: count,
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  name: z.string().min(1).max(128),
  category: ModelCategorySchema,
  description: z.string().max(2000),
  /** The owner's account, as its gateway knows it. */
  owner: z.string().min(1).max(128),
  /** The gateway that signed (its peer id carries the public key). */
  gateway: peerId,
  gguf: GgufFactsSchema,
  createdAt: count,
  /** base64url signature over modelRecordPayload(record). */
  signature: z.string().min(1).max(512),
})
export type ModelRecord = z.infer<typeof ModelRecordSchema>
export type UnsignedModelRecord = Omit<ModelRecord, 'signature'>

export const MODEL_RECORD_DOMAIN = 'cluster-model/1'

/** The bytes a gateway signs: fixed field order behind a domain tag (as receipts do). */
export function modelRecordPayload(r: UnsignedModelRecord): Uint8Array {
  const fields = [
    r.v,
    r.id,
    r.version,
    r.cid,
    r.sizeBytes,
    r.sha256,
    r.name,
    r.category,
    r.description,
    r.owner,
    r.gateway,
    [r.gguf.name, r.gguf.architecture, r.gguf.parameters, r.gguf.quantization, r.gguf.contextLength],
    r.createdAt,
  ]
  return new TextEncoder().encode(`${MODEL_RECORD_DOMAIN}\n${JSON.stringify(fields)}`)
}

/** Registry sync: the asker closes its side; the answerer sends every record, one frame each. */
export const RegistrySyncFrameSchema = ModelRecordSchema

// ---- deploy protocol: one request per stream, one answer ----

export const DeployRequestSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('deploy'),
    model: z.object({
      id: ModelSlugSchema,
      version: z.number().int().min(1).max(1_000_000),
      cid: CidStringSchema,
      sizeBytes: count,
      sha256: z.string().regex(/^[0-9a-f]{64}$/),
    }),
    /** Multiaddrs (with /p2p/) of peers known to hold the blocks; the DHT is asked as well. */
    providers: z.array(z.string().max(512)).max(16),
    /**
     * The signed registry records that vouch for it: its version 1 (which fixes the owner) and the
     * version asked for. The node checks them as any registry record, so no peer can put other
     * weights under a model's name.
     */
    records: z.array(ModelRecordSchema).min(1).max(2),
  }),
  z.object({ type: z.literal('undeploy'), modelId: ModelSlugSchema }),
])
export type DeployRequest = z.infer<typeof DeployRequestSchema>

/** `forbidden`: the asking peer is not a gateway the node trusts, or another gateway deployed the model. */
export const DeployRefusalSchema = z.enum([
  'no_room',
  'not_accepting',
  'invalid_request',
  'not_deployed',
  'internal',
  'forbidden',
])

export const DeployResponseSchema = z.discriminatedUnion('type', [
  /** Deploy: fetching has started (or the model is already there). Undeploy: done. */
  z.object({ type: z.literal('accepted'), state: z.enum(['fetching', 'loading', 'ready', 'unloaded']) }),
  z.object({ type: z.literal('refused'), code: DeployRefusalSchema, message: z.string().max(2048) }),
])
export type DeployResponse = z.infer<typeof DeployResponseSchema>
