// The Scheduler: admits requests into a bounded queue, gives each a sequence of the engine's
// context when one is free, and advances every active generation in the same tick so the
// engine decodes them as one batch. Its load (active, queued, slots) goes into heartbeats.
import type { FinishReason, Load, Usage } from '../protocols/index.ts'
import { type ChatGenerationRequest, type Engine, EngineError, type TokenStream } from './engine.ts'

export interface ScheduleOptions {
  signal?: AbortSignal
  /** Called with each piece of text as it is generated, and the prompt's size in tokens. */
  onDelta?: (text: string, tokens: number, promptTokens: number) => void
}

export interface ScheduleResult {
  finishReason: FinishReason
  usage: Usage
}

export interface SchedulerOptions {
  /** Requests allowed to wait for a free sequence; one more is refused as busy. @default 32 */
  maxQueue?: number
}

interface Job {
  request: ChatGenerationRequest
  options: ScheduleOptions
  resolve: (result: ScheduleResult) => void
  reject: (err: unknown) => void
  stream?: TokenStream
  completionTokens: number
  aborted: boolean
}

export const DEFAULT_MAX_QUEUE = 32

export class Scheduler {
  private readonly queue: Job[] = []
  private readonly active = new Set<Job>()
  /** Jobs holding a slot while their prompt is being prepared. */
  private opening = 0
  /** Finished jobs whose sequence is being handed back to the engine. */
  private releasing = 0
  private running = false
  readonly maxQueue: number

  constructor(
    private readonly engine: Engine,
    options: SchedulerOptions = {},
  ) {
    this.maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE
  }

  load(): Load {
    return {
      active: this.taken(),
      queued: this.queue.length,
      slots: this.engine.slots,
      maxQueue: this.maxQueue,
    }
  }

  /** Runs one chat generation to its end. Rejects with EngineError('busy') when the queue is full. */
  submit(request: ChatGenerationRequest, options: ScheduleOptions = {}): Promise<ScheduleResult> {
    if (options.signal?.aborted) return Promise.reject(new EngineError('invalid_request', 'aborted before start'))
    const free = this.taken() < this.engine.slots
    if (!free && this.queue.length >= this.maxQueue) {
      return Promise.reject(
        new EngineError('busy', `node busy: ${this.engine.slots} running and ${this.queue.length} queued`),
      )
    }
    return new Promise<ScheduleResult>((resolve, reject) => {
      const signal = options.signal
      const onAbort = (): void => this.abort(job)
      // The listener goes when the job settles, so a long-lived shared signal does not collect them.
      const job: Job = {
        request,
        options,
        resolve: (r) => {
          signal?.removeEventListener('abort', onAbort)
          resolve(r)
        },
        reject: (e) => {
          signal?.removeEventListener('abort', onAbort)
          reject(e)
        },
        completionTokens: 0,
        aborted: false,
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.queue.push(job)
      this.admit()
    })
  }

  private abort(job: Job): void {
    job.aborted = true
    const queued = this.queue.indexOf(job)
    if (queued >= 0) {
      this.queue.splice(queued, 1)
      job.resolve({ finishReason: 'abort', usage: { promptTokens: 0, completionTokens: 0 } })
    }
    // An active job stops at the next step boundary: within one token.
  }

  private admit(): void {
    while (this.queue.length > 0 && this.taken() < this.engine.slots) {
      const job = this.queue.shift() as Job
      this.opening++
      this.engine
        .openChat(job.request)
        .then(
          (stream) => {
            job.stream = stream
            this.active.add(job)
          },
          (err: unknown) => job.reject(err),
        )
        .finally(() => {
          this.opening--
          this.admit()
          this.run()
        })
    }
  }

  /** The decode loop: one step of every active generation per iteration, all started in one tick. */
  private run(): void {
    if (this.running || this.active.size === 0) return
    this.running = true
    void this.loop().finally(() => {
      this.running = false
      if (this.active.size > 0) this.run()
    })
  }

  private async loop(): Promise<void> {
    while (this.active.size > 0) {
      // In the engine's own order, so the decode sees the batch the way it batches best.
      const jobs = [...this.active].sort((a, b) => (a.stream?.order ?? 0) - (b.stream?.order ?? 0))
      for (const job of jobs) if (job.aborted) await this.finish(job, 'abort')
      const stepping = jobs.filter((j) => !j.aborted)
      const results = await Promise.allSettled(stepping.map((j) => (j.stream as TokenStream).step()))
      for (const [i, job] of stepping.entries()) {
        const result = results[i] as PromiseSettledResult<Awaited<ReturnType<TokenStream['step']>>>
        if (result.status === 'rejected') {
          await this.fail(job, result.reason)
          continue
        }
        const { text, tokens, finish } = result.value
        job.completionTokens += tokens
        if (job.aborted) {
          await this.finish(job, 'abort')
          continue
        }
        if (text.length > 0 || tokens > 0) {
          try {
            job.options.onDelta?.(text, tokens, (job.stream as TokenStream).promptTokens)
          } catch (err) {
            // A consumer that cannot take its text fails alone; the batch goes on.
            await this.fail(job, err)
            continue
          }
        }
        if (finish != null) await this.finish(job, finish)
      }
    }
  }

  /** Sequences in use: generating, being opened, or being handed back. */
  private taken(): number {
    return this.active.size + this.opening + this.releasing
  }

  private async finish(job: Job, finishReason: FinishReason): Promise<void> {
    if (!this.active.delete(job)) return
    const stream = job.stream as TokenStream
    // The slot stays taken until the engine has its sequence back, or a new job would find none.
    this.releasing++
    await stream.release().catch(() => undefined)
    this.releasing--
    job.resolve({
      finishReason,
      usage: { promptTokens: stream.promptTokens, completionTokens: job.completionTokens },
    })
    this.admit()
  }

  private async fail(job: Job, err: unknown): Promise<void> {
    if (!this.active.delete(job)) return
    this.releasing++
    await job.stream?.release().catch(() => undefined)
    this.releasing--
    job.reject(err instanceof EngineError ? err : new EngineError('internal', String((err as Error)?.message ?? err)))
    this.admit()
  }
}
