// The Engine interface: what a node's model can do, behind one shape. A generation is a token
// stream the Scheduler advances one step at a time, so several can be decoded in one batch;
// embeddings and rerank are one call each, over the whole request.
import type { FinishReason, Sampling, ServedModel, WireChatMessage } from '../protocols/index.ts'

export interface ChatGenerationRequest {
  messages: WireChatMessage[]
  sampling: Sampling
}

export interface StepResult {
  /** Text completed by this step (may be empty while a stop sequence might be forming). */
  text: string
  /** Tokens generated in this step (0 or 1). */
  tokens: number
  /** Set on the last step. */
  finish?: FinishReason
}

/** One generation in progress, holding one sequence of the model's context. */
export interface TokenStream {
  readonly promptTokens: number
  /** Where the stream sits in the engine's batch; streams are stepped in ascending order. */
  readonly order?: number
  /** Generates one more token. Calls on several streams in the same tick are decoded as one batch. */
  step(): Promise<StepResult>
  /** Frees the sequence. Safe to call more than once. */
  release(): Promise<void>
}

export interface EmbedResult {
  /** One per input, in input order, as the model produced it (not normalized). */
  vectors: Float32Array[]
  /** Tokens evaluated for all inputs, with the ones the model adds around each (BOS, EOS). */
  tokens: number
}

export interface RankResult {
  /** One per document, in document order: probability of relevance, 0–1. */
  scores: number[]
  /** Tokens evaluated for all query/document pairs, prompt template included. */
  tokens: number
}

/** A loaded model that can serve chat by token streams, and embeddings or rerank when describe() lists them. */
export interface Engine {
  readonly modelId: string
  /** How many generations can hold a sequence at once. */
  readonly slots: number
  describe(): ServedModel
  /** Takes a free sequence and prepares the prompt; throws EngineError on bad input. */
  openChat(request: ChatGenerationRequest): Promise<TokenStream>
  /** Tokens generated over the engine's lifetime (a counter tests and metrics watch). */
  readonly generatedTokens: number
  /** Length of the vectors embed() returns, when the model embeds. */
  readonly embeddingDimensions?: number
  /**
   * One vector per input. Throws EngineError: context_length_exceeded when an input does not fit,
   * invalid_request when the model does not embed. Stops between inputs once `signal` aborts.
   */
  embed?(input: string[], signal?: AbortSignal): Promise<EmbedResult>
  /**
   * Scores each document's relevance to the query. Throws EngineError: context_length_exceeded when a
   * pair does not fit, invalid_request when the model does not rerank. Stops between documents once `signal` aborts.
   */
  rank?(query: string, documents: string[], signal?: AbortSignal): Promise<RankResult>
  /** Frees the model; embed or rank calls under way end with EngineError('internal'). */
  close(): Promise<void>
}

export type EngineErrorCode = 'invalid_request' | 'context_length_exceeded' | 'internal' | 'busy'

/** An error an engine reports for one request; the code goes back to the requester as is. */
export class EngineError extends Error {
  override name = 'EngineError'
  constructor(
    readonly code: EngineErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options)
  }
}
