// An engine in front of an OpenAI-compatible HTTP server the node's operator runs or pays for
// (vLLM, llama-server, Ollama, a provider): the GPU owner joins the mesh with the server they
// already have. Each generation is one streamed /chat/completions; its token stream hands the
// scheduler whatever text has arrived at each step (waiting a little when none has), so streams of
// one engine never hold each other back for long. Usage comes from the server (include_usage); until
// it has told, the prompt's tokens are estimated.
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { Pool } from 'undici'
import type { FinishReason, ServedModel } from '../protocols/index.ts'
import { type ChatGenerationRequest, type Engine, EngineError, type StepResult, type TokenStream } from './engine.ts'

export interface HttpEngineOptions {
  /** Base URL up to the API version, e.g. http://127.0.0.1:8000/v1 */
  baseUrl: string
  /** The server's name for the model. */
  upstreamModel: string
  /** The id clients use in `model`. @default upstreamModel */
  modelId?: string | undefined
  /** Sent as `Authorization: Bearer …` when set. */
  apiKey?: string | undefined
  /** Generations at once. @default 8 */
  slots?: number | undefined
  /** What the server's model holds, in tokens (advertised). @default 8192 */
  contextSize?: number | undefined
  /** Longest silence from the server before a generation fails. @default 120000 */
  timeoutMs?: number | undefined
}

/** How long a step waits for text before handing back an empty one (so other streams go on). */
const STEP_WAIT_MS = 10

export class HttpEngine implements Engine {
  readonly modelId: string
  readonly slots: number
  generatedTokens = 0
  private active = 0
  private readonly pool: Pool
  private readonly path: string
  private readonly contextSize: number

  constructor(private readonly o: HttpEngineOptions) {
    const url = new URL(o.baseUrl)
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('the upstream must be http(s)')
    this.modelId = o.modelId ?? o.upstreamModel
    this.slots = o.slots ?? 8
    this.contextSize = o.contextSize ?? 8192
    this.path = `${url.pathname.replace(/\/+$/, '')}/chat/completions`
    const timeout = o.timeoutMs ?? 120_000
    this.pool = new Pool(url.origin, {
      connections: this.slots,
      keepAliveTimeout: 30_000,
      headersTimeout: timeout,
      bodyTimeout: timeout,
    })
  }

  describe(): ServedModel {
    return {
      id: this.modelId,
      name: `${this.o.upstreamModel} (HTTP upstream)`,
      contextSize: this.contextSize,
      architecture: 'http-upstream',
      state: 'ready',
      tasks: ['chat'],
    }
  }

  async openChat(request: ChatGenerationRequest): Promise<TokenStream> {
    if (this.active >= this.slots) throw new EngineError('busy', 'every slot is taken')
    this.active++
    const abort = new AbortController()
    const { sampling } = request
    const body = {
      model: this.o.upstreamModel,
      messages: request.messages,
      stream: true,
      stream_options: { include_usage: true },
      ...(sampling.maxTokens != null ? { max_tokens: sampling.maxTokens } : {}),
      ...(sampling.temperature != null ? { temperature: sampling.temperature } : {}),
      ...(sampling.topP != null ? { top_p: sampling.topP } : {}),
      ...(sampling.stop != null ? { stop: sampling.stop } : {}),
      ...(sampling.seed != null ? { seed: sampling.seed } : {}),
    }
    try {
      const res = await this.pool.request({
        path: this.path,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'text/event-stream',
          ...(this.o.apiKey ? { authorization: `Bearer ${this.o.apiKey}` } : {}),
        },
        body: JSON.stringify(body),
        signal: abort.signal,
      })
      if (res.statusCode !== 200) {
        const text = (await res.body.text().catch(() => '')).slice(0, 300)
        const code =
          res.statusCode === 429 || res.statusCode === 503
            ? 'busy'
            : res.statusCode < 500
              ? 'invalid_request'
              : 'internal'
        throw new EngineError(code, `the upstream answered ${res.statusCode}${text ? `: ${text}` : ''}`)
      }
      const prompt = request.messages.reduce((n, m) => n + m.content.length, 0)
      return new HttpTokenStream(
        res.body,
        abort,
        Math.ceil(prompt / 4) + 1,
        () => {
          this.active--
        },
        (n) => {
          this.generatedTokens += n
        },
      )
    } catch (err) {
      this.active--
      abort.abort()
      if (err instanceof EngineError) throw err
      throw new EngineError('internal', `the upstream could not be reached: ${(err as Error).message}`)
    }
  }

  async close(): Promise<void> {
    await this.pool.close()
  }
}

interface Piece {
  text: string
  /** Content events in it (a server sends about one token per event). */
  events: number
}

class HttpTokenStream implements TokenStream {
  private readonly queue: Piece[] = []
  private finish: FinishReason | undefined
  private ended = false
  private failed: Error | undefined
  private usage: { prompt: number; completion: number } | undefined
  private counted = 0
  private wake: (() => void) | undefined
  private released = false

  constructor(
    body: AsyncIterable<Uint8Array | string>,
    private readonly abort: AbortController,
    private readonly estimatedPrompt: number,
    private readonly onRelease: () => void,
    private readonly onTokens: (n: number) => void,
  ) {
    void this.read(body)
  }

  get promptTokens(): number {
    return this.usage?.prompt ?? this.estimatedPrompt
  }

  private async read(body: AsyncIterable<Uint8Array | string>): Promise<void> {
    const parser = createParser({ onEvent: (e) => this.onEvent(e) })
    const decoder = new TextDecoder()
    try {
      for await (const chunk of body)
        parser.feed(typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true }))
    } catch (err) {
      if (!this.released) this.failed = err as Error
    }
    this.ended = true
    this.wake?.()
  }

  private onEvent(e: EventSourceMessage): void {
    if (e.data === '[DONE]') return
    let data: {
      choices?: Array<{ delta?: { content?: unknown }; finish_reason?: unknown }>
      usage?: { prompt_tokens?: unknown; completion_tokens?: unknown } | null
    }
    try {
      data = JSON.parse(e.data)
    } catch {
      return
    }
    const u = data.usage
    if (u != null && typeof u.prompt_tokens === 'number' && typeof u.completion_tokens === 'number') {
      this.usage = { prompt: u.prompt_tokens, completion: u.completion_tokens }
    }
    for (const choice of data.choices ?? []) {
      const text = typeof choice.delta?.content === 'string' ? choice.delta.content : ''
      if (text.length > 0) this.queue.push({ text, events: 1 })
      if (choice.finish_reason != null) this.finish = choice.finish_reason === 'length' ? 'length' : 'stop'
    }
    this.wake?.()
  }

  async step(): Promise<StepResult> {
    if (this.queue.length === 0 && !this.ended) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, STEP_WAIT_MS)
        this.wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.wake = undefined
    }
    const pieces = this.queue.splice(0)
    let text = ''
    let tokens = 0
    for (const p of pieces) {
      text += p.text
      tokens += p.events
    }
    if (this.ended && this.queue.length === 0) {
      if (this.failed != null || (this.finish == null && this.usage == null)) {
        throw new EngineError('internal', `the upstream stream broke: ${this.failed?.message ?? 'it ended early'}`)
      }
      // The server's own count of what it generated settles the total.
      const total = this.usage?.completion ?? this.counted + tokens
      tokens = Math.max(0, total - this.counted)
      this.counted += tokens
      this.onTokens(tokens)
      return { text, tokens, finish: this.finish ?? 'stop' }
    }
    this.counted += tokens
    this.onTokens(tokens)
    return { text, tokens }
  }

  async release(): Promise<void> {
    if (this.released) return
    this.released = true
    if (!this.ended) this.abort.abort()
    this.onRelease()
  }
}
