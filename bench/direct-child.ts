// The direct baseline of the mesh benches, in a process of its own: LlamaEngine.load + Scheduler,
// exactly what a node runs, minus libp2p and the gateway. Driven over IPC by bench/lib.ts; every
// time is taken here, around Scheduler.submit, with performance.now().
// Usage (from bench/lib.ts): node bin/run-ts.js bench/direct-child.ts '{"model":…,"threads":N,"slots":N}'
import { LlamaEngine } from '../node/llama-engine.ts'
import { Scheduler } from '../node/scheduler.ts'

export interface DirectRequest {
  type: 'run'
  id: number
  prompt: string
  maxTokens: number
  seed: number
  /** Identical requests submitted together (all in one tick). */
  concurrency: number
}

export interface DirectRunResult {
  /** submit → first onDelta (any, even an empty-text one). */
  firstDeltaMs: number
  /** submit → first onDelta with non-empty text (what a streaming client sees as its first chunk). */
  ttftMs: number
  /** submit → the promise resolves (the sequence is released, as before a node sends `done`). */
  doneMs: number
  /** The first submit of the batch → this one resolves (for aggregate throughput). */
  sinceBatchStartMs: number
  completionTokens: number
  promptTokens: number
  finishReason: string
  text: string
}

export type DirectReply =
  | { type: 'ready' }
  | { type: 'result'; id: number; results: DirectRunResult[] }
  | { type: 'error'; id: number; message: string }

const opts = JSON.parse(process.argv[2] ?? '{}') as { model: string; threads: number; slots: number }
const send = (m: DirectReply): void => {
  process.send?.(m)
}

const engine = await LlamaEngine.load({ modelPath: opts.model, threads: opts.threads, slots: opts.slots, gpu: false })
const scheduler = new Scheduler(engine)

async function runOne(req: DirectRequest, batchStart: number): Promise<DirectRunResult> {
  let firstDelta = -1
  let firstText = -1
  let text = ''
  const start = performance.now()
  const result = await scheduler.submit(
    {
      messages: [{ role: 'user', content: req.prompt }],
      // The same Sampling the gateway derives from {max_tokens, temperature: 0, seed}.
      sampling: { maxTokens: req.maxTokens, temperature: 0, seed: req.seed },
    },
    {
      onDelta: (t) => {
        const now = performance.now()
        if (firstDelta < 0) firstDelta = now - start
        if (t.length > 0 && firstText < 0) firstText = now - start
        text += t
      },
    },
  )
  const end = performance.now()
  return {
    firstDeltaMs: firstDelta,
    ttftMs: firstText < 0 ? end - start : firstText,
    doneMs: end - start,
    sinceBatchStartMs: end - batchStart,
    completionTokens: result.usage.completionTokens,
    promptTokens: result.usage.promptTokens,
    finishReason: result.finishReason,
    text,
  }
}

process.on('message', (msg: DirectRequest) => {
  if (msg.type !== 'run') return
  const batchStart = performance.now()
  const runs: Array<Promise<DirectRunResult>> = []
  for (let i = 0; i < msg.concurrency; i++) runs.push(runOne(msg, batchStart))
  Promise.all(runs).then(
    (results) => send({ type: 'result', id: msg.id, results }),
    (err: unknown) => send({ type: 'error', id: msg.id, message: String((err as Error)?.message ?? err) }),
  )
})

// The parent going away (IPC closed) ends this process: no orphan holding a model in memory.
process.on('disconnect', () => {
  void engine.close().finally(() => process.exit(0))
})
process.on('SIGTERM', () => process.exit(0))

send({ type: 'ready' })
