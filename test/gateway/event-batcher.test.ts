// Completed inferences are gossiped in batches: one message for many calls, each a valid event.
import { describe, expect, it } from 'vitest'
import { EventBatcher } from '../../gateway/event-batcher.ts'
import {
  type ClusterEvent,
  ClusterEventSchema,
  encodeFrame,
  type InferenceCompleteEvent,
  MAX_EVENTS_PER_BATCH,
  MAX_GOSSIP_BYTES,
} from '../../protocols/index.ts'

const event = (i: number): InferenceCompleteEvent => ({
  v: 1,
  type: 'inference:complete',
  requestId: `chatcmpl-${'x'.repeat(24)}-${i}`,
  model: 'llama-3.3-70b-instruct',
  nodePeerId: `12D3KooW${'A'.repeat(44)}`,
  usage: { promptTokens: 1000, completionTokens: 1000 },
  finishReason: 'stop',
  ttftMs: 12,
  durationMs: 3400,
  payer: 'api_key',
  provider: 'openrouter',
  endpoint: 'transcriptions',
  at: Date.now(),
})

describe('EventBatcher', () => {
  it('a lone event goes as it is after the interval; several go as one batch; a full batch at once', async () => {
    const sent: ClusterEvent[] = []
    const batcher = new EventBatcher((e) => sent.push(e), 30)
    const lone = event(0)
    batcher.add(lone)
    expect(sent).toHaveLength(0)
    await new Promise((r) => setTimeout(r, 60))
    expect(sent).toEqual([lone])
    batcher.add(event(1))
    batcher.add(event(2))
    await new Promise((r) => setTimeout(r, 60))
    expect(sent[1]).toMatchObject({ type: 'inference:batch', events: [{ requestId: event(1).requestId }, {}] })
    for (let i = 0; i < MAX_EVENTS_PER_BATCH; i++) batcher.add(event(10 + i))
    // Full: sent without waiting.
    expect(sent).toHaveLength(3)
    const full = sent[2] as ClusterEvent
    expect(ClusterEventSchema.parse(full)).toEqual(full)
    // A full batch of long events still fits a gossip message.
    expect(encodeFrame(ClusterEventSchema, full).byteLength).toBeLessThan(MAX_GOSSIP_BYTES)
    batcher.flush()
    expect(sent).toHaveLength(3)
  })
})
