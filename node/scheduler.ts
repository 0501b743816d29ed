// The Scheduler: admits requests into a bounded queue, gives each a sequence of the engine's
// context when one is free, and advances every active generation in the same tick so the
// engine decodes them as one batch. Prompts that arrive a few ms apart wait a short admission
// window so they are prefilled together. Its load (active, queued, slots) goes into heartbeats.
// A request is queued only if it can start within a bounded wait (estimated from the measured decode
// speed and the work ahead of it); otherwise, or once that wait runs out in the queue, it is refused
// as busy, so the requester can go elsewhere instead of timing out.
import type { FinishReason, Load, Usage } from '../protocols/index.ts'
import { type ChatGenerationRequest, type Engine, EngineError, type TokenStream } from './engine.ts'

export interface ScheduleOptions {
  signal?: AbortSignal
  /** Called with each piece of text as it is generated, and the prompt's size in tokens. */
  onDelta?: (text: string, tokens: number, promptTokens: number) => void
  /** The requester's own bound on the wait in the queue (ms); the scheduler's maxQueueWaitMs applies too. */
  maxWaitMs?: number
  /** Called once, at submit, when the request is queued rather than started: requests ahead, expected wait. */
  onQueued?: (info: { position: number; etaMs?: number }) => void
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
  /**
   * Longest wait in the queue (ms). A request expected to wait longer (from the measured time per
   * token and the tokens of the work ahead) is refused as busy at once; one still queued after it
   * is refused as busy then. @default 30000
   */
  maxQueueWaitMs?: number
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
  /** Refuses it as busy when it has waited in the queue as long as it may. */
  queueTimer?: ReturnType<typeof setTimeout> | undefined
}

export const DEFAULT_MAX_QUEUE = 32
export const DEFAULT_ADMISSION_SHARE = 0.1
export const DEFAULT_MAX_ADMISSION_WAIT_MS = 50
export const DEFAULT_MAX_QUEUE_WAIT_MS = 30_000
/** Completion tokens expected of a request without max_tokens until some have been measured. */
const DEFAULT_EXPECTED_TOKENS = 256
/** How fast the speed and length estimates follow new measurements. */
const ALPHA = 0.3
/** Windows shorter than this are not worth a timer (small models prefill in a few ms). */
const MIN_ADMISSION_WAIT_MS = 1

export class Scheduler {
  private readonly queue: Job[] = []
  private readonly active = new Set<Job>()
  /** Jobs holding a slot while their prompt is being prepared. */
  private readonly opening = new Set<Job>()
  /**
   * The jobs waiting on each caller signal, with one abort listener per signal: a signal shared by
   * many requests (a service's close signal) gets one listener, not one per request.
   */
  private readonly watched = new Map<AbortSignal, { jobs: Set<Job>; listener: () => void }>()
  /** Finished jobs whose sequence is being handed back to the engine. */
  private releasing = 0
  private running = false
  /** Ends an admission wait under way. */
  private wake: (() => void) | undefined
  /** Measured prefill cost, ms per prompt token (moving average); undefined until a prefill is seen. */
  private prefillMsPerToken: number | undefined
  /** Measured duration of a decode step (one token of every active job), ms (moving average). */
  private stepMs: number | undefined
  /** Measured share of max_tokens that finished requests generated (moving average; 1 until measured). */
  private lengthShare = 1
  /** Measured completion tokens of finished requests without max_tokens (moving average). */
  private unboundedTokens: number | undefined
  readonly maxQueue: number
  readonly maxQueueWaitMs: number
  private readonly admissionShare: number
  private readonly maxAdmissionWaitMs: number

  constructor(
    private readonly engine: Engine,
    options: SchedulerOptions = {},
  ) {
    this.maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE
    this.admissionShare = options.admissionShare ?? DEFAULT_ADMISSION_SHARE
    this.maxAdmissionWaitMs = options.maxAdmissionWaitMs ?? DEFAULT_MAX_ADMISSION_WAIT_MS
    this.maxQueueWaitMs = options.maxQueueWaitMs ?? DEFAULT_MAX_QUEUE_WAIT_MS
  }

  load(): Load {
    return {
      active: this.taken(),
      queued: this.queue.length,
      slots: this.engine.slots,
      maxQueue: this.maxQueue,
    }
  }

  /**
   * Runs one chat generation to its end. Rejects with EngineError('busy') when the queue is full, when
   * the request could not start within the queue wait (expected, or waited), or when it may not wait.
   */
  submit(request: ChatGenerationRequest, options: ScheduleOptions = {}): Promise<ScheduleResult> {
    if (options.signal?.aborted) return Promise.reject(new EngineError('invalid_request', 'aborted before start'))
    const free = this.taken() < this.engine.slots
    const bound = Math.min(this.maxQueueWaitMs, options.maxWaitMs ?? Number.POSITIVE_INFINITY)
    let etaMs: number | undefined
    if (!free) {
      if (this.queue.length >= this.maxQueue || bound <= 0) {
        return Promise.reject(
          new EngineError('busy', `node busy: ${this.engine.slots} running and ${this.queue.length} queued`),
        )
      }
      etaMs = this.expectedStartMs(bound)
      if (etaMs != null && etaMs > bound) {
        return Promise.reject(
          new EngineError(
            'busy',
            `node busy: ${this.engine.slots} running and ${this.queue.length} queued; it could not start within ${Math.round(bound / 1000)} s`,
          ),
        )
      }
    }
    return new Promise<ScheduleResult>((resolve, reject) => {
      const job: Job = {
        request,
        options,
        resolve: (r) => {
          this.unwatch(job)
          resolve(r)
        },
        reject: (e) => {
          this.unwatch(job)
          reject(e)
        },
        completionTokens: 0,
        aborted: false,
        submittedAt: performance.now(),
        started: false,
      }
      if (options.signal != null) this.watch(job, options.signal)
      if (!free) {
        const position = this.queue.length
        job.queueTimer = setTimeout(() => {
          job.queueTimer = undefined
          if (!this.dequeue(job)) return
          job.reject(
            new EngineError(
              'busy',
              `node busy: ${this.engine.slots} running; it waited ${Math.round(bound / 1000)} s in the queue without starting`,
            ),
          )
        }, bound)
        job.queueTimer.unref?.()
        try {
          options.onQueued?.({ position, ...(etaMs != null ? { etaMs: Math.round(etaMs) } : {}) })
        } catch {
          // the requester is told when it can be; the request waits all the same
        }
      }
      this.queue.push(job)
      this.admit()
    })
  }

  /** Listens for aborts of `signal` on behalf of `job`: one listener per signal, whatever its jobs. */
  private watch(job: Job, signal: AbortSignal): void {
    let entry = this.watched.get(signal)
    if (entry == null) {
      const jobs = new Set<Job>()
      const listener = (): void => {
        this.watched.delete(signal)
        for (const j of [...jobs]) this.abort(j)
      }
      entry = { jobs, listener }
      this.watched.set(signal, entry)
      signal.addEventListener('abort', listener, { once: true })
    }
    entry.jobs.add(job)
  }

  /** The job has settled: its signal's listener goes with the last job waiting on it. */
  private unwatch(job: Job): void {
    const signal = job.options.signal
    if (signal == null) return
    const entry = this.watched.get(signal)
    if (entry == null || !entry.jobs.delete(job)) return
    if (entry.jobs.size === 0) {
      this.watched.delete(signal)
      signal.removeEventListener('abort', entry.listener)
    }
  }

  /** Takes a job out of the queue (false when it is not there any more). */
  private dequeue(job: Job): boolean {
    const i = this.queue.indexOf(job)
    if (i < 0) return false
    this.queue.splice(i, 1)
    clearTimeout(job.queueTimer)
    job.queueTimer = undefined
    return true
  }

  /**
   * When a request submitted now would start (ms from now), from the measured time per decode step
   * and the tokens each job ahead of it is expected to generate; undefined before any step has been
   * measured. Stops counting once past `limit` (the answer is then only known to exceed it).
   */
  private expectedStartMs(limit: number): number | undefined {
    const stepMs = this.stepMs
    if (stepMs == null) return undefined
    const frees: number[] = []
    for (const job of this.active) frees.push(Math.max(0, this.expectedTokens(job) - job.completionTokens) * stepMs)
    for (const job of this.opening) frees.push(this.expectedTokens(job) * stepMs)
    for (let i = 0; i < this.releasing; i++) frees.push(0)
    while (frees.length < this.engine.slots) frees.push(0)
    const earliest = (): number => {
      let at = 0
      for (let i = 1; i < frees.length; i++) if ((frees[i] as number) < (frees[at] as number)) at = i
      return at
    }
    for (const job of this.queue) {
      const at = earliest()
      const start = frees[at] as number
      if (start > limit) return start
      frees[at] = start + this.expectedTokens(job) * stepMs
    }
    return frees[earliest()] as number
  }

  /** Completion tokens `job` is expected to generate in all. */
  private expectedTokens(job: Job): number {
    const max = job.request.sampling.maxTokens
    if (max != null) return Math.max(1, Math.ceil(max * this.lengthShare))
    return this.unboundedTokens ?? DEFAULT_EXPECTED_TOKENS
  }

  private measureLength(job: Job): void {
    const max = job.request.sampling.maxTokens
    if (max != null) {
      this.lengthShare = follow(this.lengthShare, Math.min(1, job.completionTokens / max))
    } else {
      this.unboundedTokens = follow(this.unboundedTokens, job.completionTokens)
    }
  }

  private abort(job: Job): void {
    job.aborted = true
    if (this.dequeue(job)) {
      job.resolve({ finishReason: 'abort', usage: { promptTokens: 0, completionTokens: 0 } })
    }
    // An active job stops at the next step boundary: within one token (or now, if it is waiting).
    this.wake?.()
  }

  private admit(): void {
    while (this.queue.length > 0 && this.taken() < this.engine.slots) {
      const job = this.queue.shift() as Job
      clearTimeout(job.queueTimer)
      job.queueTimer = undefined
      this.opening.add(job)
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
          this.opening.delete(job)
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
      else this.measureStep(performance.now() - stepStart)
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

  private measureStep(ms: number): void {
    this.stepMs = follow(this.stepMs, ms)
  }

  private measurePrefill(msPerToken: number): void {
    this.prefillMsPerToken = follow(this.prefillMsPerToken, msPerToken)
  }

  /** Sequences in use: generating, being opened, or being handed back. */
  private taken(): number {
    return this.active.size + this.opening.size + this.releasing
  }

  private async finish(job: Job, finishReason: FinishReason): Promise<void> {
    if (!this.active.delete(job)) return
    const stream = job.stream as TokenStream
    // The slot stays taken until the engine has its sequence back, or a new job would find none.
    this.releasing++
    await stream.release().catch(() => undefined)
    this.releasing--
    if (finishReason !== 'abort') this.measureLength(job)
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

/** A moving average: the first measurement as it is, then ALPHA of each new one. */
function follow(previous: number | undefined, measured: number): number {
  return previous == null ? measured : previous + ALPHA * (measured - previous)
}
