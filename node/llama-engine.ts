// The node-llama-cpp engine: loads a GGUF (validated first, since llama.cpp aborts the process on
// some malformed files), renders chats with the model's own template, and exposes each request as
// a token stream on one sequence of a shared context, so the Scheduler can batch them. Embeddings
// and rerank run in contexts of their own, created on first use.
import { availableParallelism } from 'node:os'
import {
  type ChatHistoryItem,
  type ChatWrapper,
  getLlama,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaEmbeddingContext,
  LlamaLogLevel,
  type LlamaModel,
  type LlamaRankingContext,
  resolveChatWrapper,
  type Token,
} from 'node-llama-cpp'
import type { ServedModel } from '../protocols/index.ts'
import { type GgufSummary, validateGguf } from '../src/models/gguf.ts'
import {
  type ChatGenerationRequest,
  type EmbedResult,
  type Engine,
  EngineError,
  type RankResult,
  type StepResult,
  type TokenStream,
} from './engine.ts'

export interface LlamaEngineOptions {
  modelPath: string
  /** The id clients use in `model`. @default the GGUF's general.name, slugged, or the file name */
  modelId?: string
  /** CPU threads for decoding. @default defaultThreads(): all cores (llama.cpp's own default is far too high on small machines), 1 for tiny models */
  threads?: number
  /** Parallel sequences (slots) in the shared context. @default 4 */
  slots?: number
  /** Context size of each sequence in tokens. @default min(model's trained context, 4096) */
  contextSize?: number
  /**
   * Context size of the embedding and of the ranking context (each made on first use, one sequence):
   * the longest input, or query/document pair, they take. @default min(model's trained context, DEFAULT_VECTOR_CONTEXT_SIZE)
   */
  vectorContextSize?: number
  /** GPU backend. @default 'auto' */
  gpu?: 'auto' | false
  /** IPFS CID of the weights, when known. */
  cid?: string
}

/**
 * All cores, except for very small models: there llama.cpp's per-layer thread barrier costs more
 * than the work it splits, and on a busy machine spinning threads collapse throughput (measured
 * on the tiny preset, 2 cores under load: 1 thread ~1800 tok/s, 2 threads ~13 tok/s).
 */
export function defaultThreads(parameterCount: number): number {
  const cores = availableParallelism()
  if (parameterCount < 100_000_000) return 1
  return cores
}

/** Cap of the default context size for embeddings and rerank: enough for a long passage, small in memory. */
export const DEFAULT_VECTOR_CONTEXT_SIZE = 2048

/**
 * Tokens decoded per step in the embedding and ranking contexts. There every token of a batch is an
 * output, and llama.cpp sizes its output buffer by the batch: measured on the 1b preset (128k
 * vocabulary), a 2048-token batch took +2 GB, a 512-token one +0.5 GB. Longer inputs are decoded in
 * steps: with causal attention, last-token pooling (and none, and rank) gives the same vector either
 * way (measured: identical); mean and CLS pooling do not (measured: off by up to 0.26), so models
 * that pool so get the whole input in one batch.
 */
const VECTOR_BATCH_SIZE = 512

/** llama.cpp's pooling types (GGUF `<arch>.pooling_type`). */
const POOLING_MEAN = 1
const POOLING_CLS = 2
const POOLING_RANK = 4

/** Documents ranked between two looks at the caller's signal. */
const RANK_SLICE = 8

let llamaInstances = new Map<string, Promise<Llama>>()

function sharedLlama(gpu: 'auto' | false): Promise<Llama> {
  const key = String(gpu)
  let llama = llamaInstances.get(key)
  if (llama == null) {
    llama = getLlama({ gpu, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false })
    llamaInstances.set(key, llama)
    llama.catch(() => {
      llamaInstances = new Map([...llamaInstances].filter(([k]) => k !== key))
    })
  }
  return llama
}

function slug(text: string): string {
  return text
    .toLowerCase()
    .replace(/\([^)]*\)/g, '')
    .replace(/[^a-z0-9.]+/g, '-')
    .replace(/^-+|-+$/g, '')
}

/** How the embedding and ranking contexts are made, and what the model can do with them. */
interface VectorSettings {
  tasks: ServedModel['tasks']
  contextSize: number
  batchSize: number
  threads: number
}

export class LlamaEngine implements Engine {
  generatedTokens = 0
  readonly embeddingDimensions?: number
  private readonly free: LlamaContextSequence[] = []
  private readonly slotOf = new Map<LlamaContextSequence, number>()
  private embedding: Promise<LlamaEmbeddingContext> | undefined
  private ranking: Promise<LlamaRankingContext> | undefined
  /** Aborted by close(): embed and rank calls under way stop at their next input. */
  private readonly closing = new AbortController()
  private readonly vectorCalls = new Set<Promise<unknown>>()

  private constructor(
    readonly modelId: string,
    readonly slots: number,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly chatWrapper: ChatWrapper,
    private readonly summary: GgufSummary,
    private readonly cid: string | undefined,
    private readonly vectors: VectorSettings,
  ) {
    if (vectors.tasks.includes('embeddings')) this.embeddingDimensions = model.embeddingVectorSize
    // Sequence ids follow creation order; remember each one's index to hand the lowest out first.
    for (let i = 0; i < slots; i++) {
      const sequence = context.getSequence()
      this.slotOf.set(sequence, i)
      this.free.push(sequence)
    }
  }

  static async load(options: LlamaEngineOptions): Promise<LlamaEngine> {
    const summary = await validateGguf(options.modelPath)
    const llama = await sharedLlama(options.gpu ?? 'auto')
    const threads = options.threads ?? defaultThreads(summary.parameterCount)
    const slots = options.slots ?? 4
    const model = await llama.loadModel({ modelPath: options.modelPath })
    try {
      const contextSize = options.contextSize ?? Math.min(summary.contextLength, 4096)
      const context = await model.createContext({
        sequences: slots,
        contextSize,
        threads,
        batchSize: Math.min(512, contextSize),
      })
      // The model's own template when it has one: specialised wrappers add text of their own
      // (dates, default system prompts) that the client did not send and would pay for.
      const wrapper = summary.hasChatTemplate
        ? resolveChatWrapper(model, {
            type: 'jinjaTemplate',
            fallbackToOtherWrappersOnJinjaError: true,
            warningLogs: false,
          })
        : resolveChatWrapper(model, { warningLogs: false })
      const id = options.modelId ?? (slug(summary.name) || slug(options.modelPath.split('/').pop() ?? 'model'))
      const vectorContextSize =
        options.vectorContextSize ?? Math.min(summary.contextLength, DEFAULT_VECTOR_CONTEXT_SIZE)
      const pooling = model.fileInfo.architectureMetadata.pooling_type as number | undefined
      // Mean and CLS pooling (and attention that looks ahead) need the whole input in one batch.
      const wholeInput =
        pooling === POOLING_MEAN ||
        pooling === POOLING_CLS ||
        model.fileInfo.architectureMetadata.attention?.causal === false
      const vectors: VectorSettings = {
        tasks: modelTasks(model),
        contextSize: vectorContextSize,
        batchSize: wholeInput ? vectorContextSize : Math.min(VECTOR_BATCH_SIZE, vectorContextSize),
        threads,
      }
      return new LlamaEngine(id, slots, model, context, wrapper, summary, options.cid, vectors)
    } catch (err) {
      await model.dispose()
      throw err
    }
  }

  describe(): ServedModel {
    return {
      id: this.modelId,
      name: this.summary.name,
      ...(this.cid ? { cid: this.cid } : {}),
      contextSize: this.context.contextSize,
      quantization: this.summary.quantization,
      architecture: this.summary.architecture,
      parameters: this.summary.parameterCount,
      sizeBytes: this.summary.sizeBytes,
      state: 'ready',
      tasks: [...this.vectors.tasks],
    }
  }

  async embed(input: string[], signal?: AbortSignal): Promise<EmbedResult> {
    if (!this.vectors.tasks.includes('embeddings')) {
      throw new EngineError('invalid_request', `the model ${this.modelId} does not serve embeddings`)
    }
    return this.vectorCall(signal, async (stop) => {
      const context = await this.embeddingContext()
      const lengths = input.map((text) => context.calculateInputLength(text))
      this.checkFits(lengths, 'input')
      const vectors: Float32Array[] = []
      for (const text of input) {
        stop.throwIfAborted()
        const { vector } = await context.getEmbeddingFor(text)
        if (vector.length !== this.embeddingDimensions) {
          throw new EngineError('internal', `the model gave a vector of ${vector.length} values`)
        }
        vectors.push(Float32Array.from(vector))
      }
      return { vectors, tokens: lengths.reduce((a, b) => a + b, 0) }
    })
  }

  async rank(query: string, documents: string[], signal?: AbortSignal): Promise<RankResult> {
    if (!this.vectors.tasks.includes('rerank')) {
      throw new EngineError('invalid_request', `the model ${this.modelId} does not serve rerank`)
    }
    return this.vectorCall(signal, async (stop) => {
      const context = await this.rankingContext()
      const lengths = documents.map((document) => context.calculateInputLength(query, document))
      this.checkFits(lengths, 'query + document')
      const scores: number[] = []
      for (let i = 0; i < documents.length; i += RANK_SLICE) {
        stop.throwIfAborted()
        scores.push(...(await context.rankAll(query, documents.slice(i, i + RANK_SLICE))))
      }
      return { scores, tokens: lengths.reduce((a, b) => a + b, 0) }
    })
  }

  /** node-llama-cpp refuses an input of the context's size or more (it needs one cell past it). */
  private checkFits(lengths: number[], what: string): void {
    const limit = this.vectors.contextSize - 1
    const index = lengths.findIndex((n) => n > limit)
    if (index < 0) return
    throw new EngineError(
      'context_length_exceeded',
      `${what} ${index} is ${lengths[index]} tokens; this model takes at most ${limit} per ${what}`,
    )
  }

  /**
   * Runs one embed or rank call: stops it when the caller's signal or close() aborts, and lets
   * close() wait for it before freeing the contexts.
   */
  private async vectorCall<T>(signal: AbortSignal | undefined, run: (stop: AbortSignal) => Promise<T>): Promise<T> {
    if (this.closing.signal.aborted) throw new EngineError('internal', `the model ${this.modelId} was unloaded`)
    const stop = signal ? AbortSignal.any([signal, this.closing.signal]) : this.closing.signal
    const call = run(stop)
    this.vectorCalls.add(call)
    try {
      return await call
    } catch (err) {
      if (signal?.aborted) throw signal.reason
      if (this.closing.signal.aborted) throw new EngineError('internal', `the model ${this.modelId} was unloaded`)
      throw err
    } finally {
      this.vectorCalls.delete(call)
    }
  }

  private embeddingContext(): Promise<LlamaEmbeddingContext> {
    if (this.embedding == null) {
      const created = this.model.createEmbeddingContext(this.vectorContextOptions())
      this.embedding = created
      // A failed creation (memory) is tried again by the next call.
      created.catch(() => {
        if (this.embedding === created) this.embedding = undefined
      })
    }
    return this.embedding
  }

  private rankingContext(): Promise<LlamaRankingContext> {
    if (this.ranking == null) {
      const created = this.model.createRankingContext(this.vectorContextOptions())
      this.ranking = created
      created.catch(() => {
        if (this.ranking === created) this.ranking = undefined
      })
    }
    return this.ranking
  }

  private vectorContextOptions(): { contextSize: number; batchSize: number; threads: number } {
    const { contextSize, batchSize, threads } = this.vectors
    return { contextSize, batchSize, threads }
  }

  async openChat(request: ChatGenerationRequest): Promise<TokenStream> {
    const sequence = this.takeSequence()
    if (sequence == null) throw new EngineError('busy', 'no free sequence')
    try {
      const tokens = this.renderChat(request)
      const room = this.context.contextSize - tokens.length
      if (room < 1) {
        throw new EngineError(
          'context_length_exceeded',
          `the prompt is ${tokens.length} tokens; this model's context holds ${this.context.contextSize}`,
        )
      }
      const wanted = request.sampling.maxTokens
      if (wanted != null && wanted > room) {
        throw new EngineError(
          'context_length_exceeded',
          `prompt (${tokens.length} tokens) + max_tokens (${wanted}) exceeds this model's context of ${this.context.contextSize} tokens`,
        )
      }
      return new LlamaTokenStream(this, sequence, tokens, request, wanted ?? room)
    } catch (err) {
      this.free.push(sequence)
      throw err
    }
  }

  /**
   * The free sequence with the lowest id. llama.cpp (node-llama-cpp runs it with a split KV cache)
   * decodes sequences in one batch only when their ids are consecutive and ascending, so handing out
   * low ids first keeps concurrent requests together (measured: 4 streams 16.6 vs 8.6 tok/s).
   */
  private takeSequence(): LlamaContextSequence | undefined {
    if (this.free.length === 0) return undefined
    let best = 0
    for (let i = 1; i < this.free.length; i++) {
      if (this.slot(this.free[i] as LlamaContextSequence) < this.slot(this.free[best] as LlamaContextSequence)) best = i
    }
    return this.free.splice(best, 1)[0]
  }

  slot(sequence: LlamaContextSequence): number {
    return this.slotOf.get(sequence) ?? 0
  }

  /** Called by a stream when it is done with its sequence. */
  async returnSequence(sequence: LlamaContextSequence): Promise<void> {
    await sequence.clearHistory()
    this.free.push(sequence)
  }

  countToken(): void {
    this.generatedTokens++
  }

  detokenize(tokens: readonly Token[], lastTokens?: readonly Token[]): string {
    return this.model.detokenize(tokens, false, lastTokens)
  }

  async close(): Promise<void> {
    this.closing.abort()
    await Promise.allSettled(this.vectorCalls)
    for (const created of [this.embedding, this.ranking]) {
      const context = await created?.catch(() => undefined)
      await context?.dispose()
    }
    await this.context.dispose()
    await this.model.dispose()
  }

  private renderChat(request: ChatGenerationRequest): Token[] {
    const history: ChatHistoryItem[] = []
    for (const m of request.messages) {
      if (m.role === 'system') history.push({ type: 'system', text: m.content })
      else if (m.role === 'user') history.push({ type: 'user', text: m.content })
      else history.push({ type: 'model', response: [m.content] })
    }
    // The answer we generate continues a model turn; an assistant last message is continued as is.
    const last = history.at(-1)
    if (last?.type !== 'model') history.push({ type: 'model', response: [] })
    const { contextText } = this.chatWrapper.generateContextState({ chatHistory: history })
    return contextText.tokenize(this.model.tokenizer)
  }
}

/**
 * What a loaded model can do. Embeddings: any decoder except a reranker, whose pooled output is its
 * label scores rather than a vector. Rerank: a model with a ranking head (node-llama-cpp's own test).
 */
function modelTasks(model: LlamaModel): ServedModel['tasks'] {
  const tasks: ServedModel['tasks'] = ['chat']
  const insights = model.fileInsights
  const pooling = model.fileInfo.architectureMetadata.pooling_type as number | undefined
  if (!(insights.hasEncoder && insights.hasDecoder) && pooling !== POOLING_RANK) tasks.push('embeddings')
  if (insights.supportsRanking) tasks.push('rerank')
  return tasks
}

/** One generation: pulls tokens one at a time, detokenizes safely and applies stop sequences. */
class LlamaTokenStream implements TokenStream {
  readonly promptTokens: number
  readonly order: number
  private readonly generator: ReturnType<LlamaContextSequence['evaluate']>
  private generated = 0
  private pending: Token[] = []
  private lastTokens: Token[] = []
  /** Text decoded but not yet released: it may be the start of a stop sequence. */
  private held = ''
  private released = false
  private readonly stops: string[]
  private readonly longestStop: number

  constructor(
    private readonly engine: LlamaEngine,
    private readonly sequence: LlamaContextSequence,
    prompt: Token[],
    request: ChatGenerationRequest,
    private readonly maxTokens: number,
  ) {
    this.promptTokens = prompt.length
    this.order = engine.slot(sequence)
    this.stops = request.sampling.stop ?? []
    this.longestStop = Math.max(0, ...this.stops.map((s) => s.length))
    const { temperature, topP, seed } = request.sampling
    this.generator = sequence.evaluate(prompt, {
      temperature: temperature ?? 1,
      ...(topP != null ? { topP } : {}),
      ...(seed != null ? { seed } : {}),
    })
  }

  async step(): Promise<StepResult> {
    if (this.generated >= this.maxTokens) return this.end('length')
    const next = await this.generator.next()
    if (next.done) return this.end('stop') // the model produced an end-of-generation token
    this.generated++
    this.engine.countToken()
    this.pending.push(next.value)
    const decoded = this.engine.detokenize(this.pending, this.lastTokens)
    // An incomplete UTF-8 sequence decodes to U+FFFD: wait for the rest of the character.
    if (decoded.endsWith('\uFFFD') && this.pending.length < 8) {
      return this.generated >= this.maxTokens ? this.end('length', 1) : { text: '', tokens: 1 }
    }
    this.lastTokens = [...this.lastTokens, ...this.pending].slice(-16)
    this.pending = []
    this.held += decoded
    const stopAt = this.findStop()
    if (stopAt >= 0) {
      const text = this.held.slice(0, stopAt)
      this.held = ''
      return { text, tokens: 1, finish: 'stop' }
    }
    if (this.generated >= this.maxTokens) return this.end('length', 1)
    // Release everything that cannot be the beginning of a stop sequence.
    const keep = this.partialStopLength()
    const text = this.held.slice(0, this.held.length - keep)
    this.held = this.held.slice(this.held.length - keep)
    return { text, tokens: 1 }
  }

  async release(): Promise<void> {
    if (this.released) return
    this.released = true
    await this.generator.return().catch(() => undefined)
    await this.engine.returnSequence(this.sequence)
  }

  private end(finish: 'stop' | 'length', tokens = 0): StepResult {
    const text = this.held + (this.pending.length ? this.engine.detokenize(this.pending, this.lastTokens) : '')
    this.held = ''
    this.pending = []
    return { text, tokens, finish }
  }

  private findStop(): number {
    let best = -1
    for (const s of this.stops) {
      const i = this.held.indexOf(s)
      if (i >= 0 && (best < 0 || i < best)) best = i
    }
    return best
  }

  /** Length of the longest tail of `held` that is a proper prefix of some stop sequence. */
  private partialStopLength(): number {
    const max = Math.min(this.longestStop - 1, this.held.length)
    for (let len = max; len > 0; len--) {
      const tail = this.held.slice(this.held.length - len)
      if (this.stops.some((s) => s.startsWith(tail))) return len
    }
    return 0
  }
}

/** GPUs llama.cpp can use here, with their VRAM; empty on a CPU-only machine. */
export async function llamaGpus(gpu: 'auto' | false): Promise<Array<{ name: string; vramBytes: number }>> {
  const llama = await sharedLlama(gpu)
  if (llama.gpu === false) return []
  const [names, vram] = await Promise.all([llama.getGpuDeviceNames(), llama.getVramState()])
  const per = names.length > 0 ? Math.floor(vram.total / names.length) : vram.total
  return (names.length > 0 ? names : [String(llama.gpu)]).map((name) => ({ name, vramBytes: per }))
}
