// The Engine interface: what a node's model can do, behind one shape. A generation is a token
// stream the Scheduler advances one step at a time, so several can be decoded in one batch.
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

/** A loaded model that can serve chat by token streams. */
export interface Engine {
  readonly modelId: string
  /** How many generations can hold a sequence at once. */
  readonly slots: number
  describe(): ServedModel
  /** Takes a free sequence and prepares the prompt; throws EngineError on bad input. */
  openChat(request: ChatGenerationRequest): Promise<TokenStream>
  /** Tokens generated over the engine's lifetime (a counter tests and metrics watch). */
  readonly generatedTokens: number
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
