// The Scheduler: admits requests into a bounded queue, gives each a sequence of the engine's
// context when one is free, and advances every active generation in the same tick so the
// engine decodes them as one batch. Prompts that arrive a few ms apart wait a short admission
// window so they are prefilled together. Its load (active, queued, slots) goes into heartbeats.
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
  /**
   * The admission window, as a share of a new prompt's expected prefill time. Concurrent requests
   * reach a node a few ms apart (network, gateway); started at once, the first one's prefill runs
   * alone and the others wait for all of it before theirs. So a step that would start a prompt
   * waits until that prompt has been waiting this share of its own expected prefill time (from
   * the prefill speed measured on earlier steps): a lone request's time to first token grows by
   * at most this share, and prompts arriving meanwhile are prefilled in the same batch.
   * 0 turns the window off. @default 0.1
   */
  admissionShare?: number
  /** Upper bound of the admission window in ms. @default 50 */
  maxAdmissionWaitMs?: number
}

interface Job {
  request: ChatGenerationRequest
  options: ScheduleOptions
  resolve: (result: ScheduleResult) => void
  reject: (err: unknown) => void
  stream?: TokenStream
  completionTokens: number
  aborted: boolean
  /** performance.now() at submit. */
  submittedAt: number
  /** Stepped at least once: its prompt has been evaluated. */
  started: boolean
}

export const DEFAULT_MAX_QUEUE = 32
export const DEFAULT_ADMISSION_SHARE = 0.1
export const DEFAULT_MAX_ADMISSION_WAIT_MS = 50
/** Windows shorter than this are not worth a timer (small models prefill in a few ms). */
const MIN_ADMISSION_WAIT_MS = 1

export class Scheduler {
  private readonly queue: Job[] = []
  private readonly active = new Set<Job>()
  /** Jobs holding a slot while their prompt is being prepared. */
  private opening = 0
  /** Finished jobs whose sequence is being handed back to the engine. */
  private releasing = 0
  private running = false
  /** Ends an admission wait under way. */
  private wake: (() => void) | undefined
  /** Measured prefill cost, ms per prompt token (moving average); undefined until a prefill is seen. */
  private prefillMsPerToken: number | undefined
  readonly maxQueue: number
  private readonly admissionShare: number
  private readonly maxAdmissionWaitMs: number

  constructor(
    private readonly engine: Engine,
    options: SchedulerOptions = {},
  ) {
    this.maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE
    this.admissionShare = options.admissionShare ?? DEFAULT_ADMISSION_SHARE
    this.maxAdmissionWaitMs = options.maxAdmissionWaitMs ?? DEFAULT_MAX_ADMISSION_WAIT_MS
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
        submittedAt: performance.now(),
        started: false,
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
    // An active job stops at the next step boundary: within one token (or now, if it is waiting).
    this.wake?.()
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
      for (const job of [...this.active]) if (job.aborted) await this.finish(job, 'abort')
      const wait = this.admissionWait()
      if (wait > 0) {
        // Requests arriving meanwhile are opened and join this step; an abort ends the wait early.
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, wait)
          this.wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
        this.wake = undefined
        continue
      }
      // In the engine's own order, so the decode sees the batch the way it batches best.
      const stepping = [...this.active]
        .filter((j) => !j.aborted)
        .sort((a, b) => (a.stream?.order ?? 0) - (b.stream?.order ?? 0))
      if (stepping.length === 0) continue
      let promptTokens = 0
      for (const job of stepping) {
        if (!job.started) promptTokens += (job.stream as TokenStream).promptTokens
        job.started = true
      }
      const stepStart = performance.now()
      const results = await Promise.allSettled(stepping.map((j) => (j.stream as TokenStream).step()))
      if (promptTokens > 0) this.measurePrefill((performance.now() - stepStart) / promptTokens)
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

  /**
   * How long the next step should wait for more prompts (ms, 0 = go): until the oldest prompt not
   * yet evaluated has waited its share of its expected prefill time. Later arrivals do not extend it.
   */
  private admissionWait(): number {
    if (this.admissionShare <= 0 || this.prefillMsPerToken == null) return 0
    let oldest: Job | undefined
    for (const job of this.active) {
      if (!job.started && !job.aborted && (oldest == null || job.submittedAt < oldest.submittedAt)) oldest = job
    }
    if (oldest == null) return 0
    const prompt = (oldest.stream as TokenStream).promptTokens
    const window = Math.min(this.maxAdmissionWaitMs, this.admissionShare * prompt * this.prefillMsPerToken)
    if (window < MIN_ADMISSION_WAIT_MS) return 0
    return Math.max(0, oldest.submittedAt + window - performance.now())
  }

  private measurePrefill(msPerToken: number): void {
    const prev = this.prefillMsPerToken
    this.prefillMsPerToken = prev == null ? msPerToken : 0.7 * prev + 0.3 * msPerToken
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
