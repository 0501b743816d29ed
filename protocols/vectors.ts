// Frames of the vectors protocol (VECTORS_PROTOCOL): a gateway asks a node for embeddings or rerank
// scores, one request per stream, and gets one answer carrying usage and the node's signed receipt.
import { z } from 'zod'
import { InvalidMessageError } from './codec.ts'
import { ErrorFrameSchema, InferenceRequestFrameSchema, ReceiptSchema, UsageSchema } from './schemas.ts'

/** Most inputs in one embed request (OpenAI's limit). */
export const MAX_EMBED_INPUTS = 2048
/** Most documents in one rerank request. */
export const MAX_RERANK_DOCUMENTS = 1000
/** Largest vector length a request may ask for or a reply may carry. */
export const MAX_EMBED_DIMENSIONS = 65_536

const requestId = InferenceRequestFrameSchema.shape.id
const modelId = InferenceRequestFrameSchema.shape.model

export const EmbedRequestFrameSchema = z.object({
  type: z.literal('embed'),
  id: requestId,
  model: modelId,
  /** Texts to embed, each one vector; an empty string has no meaning to embed and is refused (as OpenAI does). */
  input: z
    .array(z.string().min(1, 'an input must not be an empty string'))
    .min(1, 'at least one input is needed')
    .max(MAX_EMBED_INPUTS, `at most ${MAX_EMBED_INPUTS} inputs per request`),
  /** Shorten each vector to its first `dimensions` values (renormalized); at most the model's own length. */
  dimensions: z.number().int().positive().max(MAX_EMBED_DIMENSIONS).optional(),
})
export type EmbedRequestFrame = z.infer<typeof EmbedRequestFrameSchema>

export const RerankRequestFrameSchema = z.object({
  type: z.literal('rerank'),
  id: requestId,
  model: modelId,
  query: z.string().min(1, 'the query must not be an empty string'),
  /** Documents to score against the query; an empty one is scored like any other. */
  documents: z
    .array(z.string())
    .min(1, 'at least one document is needed')
    .max(MAX_RERANK_DOCUMENTS, `at most ${MAX_RERANK_DOCUMENTS} documents per request`),
})
export type RerankRequestFrame = z.infer<typeof RerankRequestFrameSchema>

/** What a requester sends first (and only) on a vectors stream. */
export const VectorsRequestFrameSchema = z.discriminatedUnion('type', [
  EmbedRequestFrameSchema,
  RerankRequestFrameSchema,
])
export type VectorsRequestFrame = z.infer<typeof VectorsRequestFrameSchema>

/** Embeddings and rerank evaluate the input and generate nothing: completionTokens is always 0. */
export const VectorsUsageSchema = UsageSchema.extend({ completionTokens: z.literal(0) })
export type VectorsUsage = z.infer<typeof VectorsUsageSchema>

/** Length of the base64 text of a float32 vector of `dimensions` values. */
const base64Length = (dimensions: number): number => 4 * Math.ceil((dimensions * 4) / 3)

export const EmbeddingsFrameSchema = z
  .object({
    type: z.literal('embeddings'),
    /** One per input, in input order: base64 of the vector's float32 values, little-endian (encodeVector). */
    vectors: z.array(z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, 'base64')).max(MAX_EMBED_INPUTS),
    /** Values in each vector. */
    dimensions: z.number().int().positive().max(MAX_EMBED_DIMENSIONS),
    usage: VectorsUsageSchema,
    receipt: ReceiptSchema,
  })
  .refine((f) => f.vectors.every((v) => v.length === base64Length(f.dimensions)), {
    message: 'every vector must hold `dimensions` float32 values',
    path: ['vectors'],
  })
export type EmbeddingsFrame = z.infer<typeof EmbeddingsFrameSchema>

export const ScoresFrameSchema = z.object({
  type: z.literal('scores'),
  /** One per document, in document order: the probability that the document is relevant to the query. */
  scores: z.array(z.number().min(0).max(1)).max(MAX_RERANK_DOCUMENTS),
  usage: VectorsUsageSchema,
  receipt: ReceiptSchema,
})
export type ScoresFrame = z.infer<typeof ScoresFrameSchema>

/** What a node answers on a vectors stream: one frame, then it closes. */
export const VectorsResponseFrameSchema = z.discriminatedUnion('type', [
  EmbeddingsFrameSchema,
  ScoresFrameSchema,
  ErrorFrameSchema,
])
export type VectorsResponseFrame = z.infer<typeof VectorsResponseFrameSchema>

/** A vector on the wire: its float32 values, little-endian whatever the machine, as base64. */
export function encodeVector(vector: Float32Array): string {
  const bytes = Buffer.allocUnsafe(vector.length * 4)
  for (let i = 0; i < vector.length; i++) bytes.writeFloatLE(vector[i] ?? 0, i * 4)
  return bytes.toString('base64')
}

/** Reads a vector written by encodeVector; InvalidMessageError unless it holds exactly `dimensions` finite values. */
export function decodeVector(text: string, dimensions: number): Float32Array {
  const bytes = Buffer.from(text, 'base64')
  if (bytes.byteLength !== dimensions * 4) {
    throw new InvalidMessageError(`a vector of ${bytes.byteLength} bytes where ${dimensions} float32 values were due`)
  }
  const vector = new Float32Array(dimensions)
  for (let i = 0; i < dimensions; i++) {
    const value = bytes.readFloatLE(i * 4)
    if (!Number.isFinite(value)) throw new InvalidMessageError('a vector holds a value that is not finite')
    vector[i] = value
  }
  return vector
}
