// sendWindowUpdatesAtHalf: a yamux stream that receives small frames (one per token) must not answer
// each with a window update, yet a sender must never run short of credit: updates resume once half
// the receive window is used, and updates that carry flags (ACK of a new stream) still go out.
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'
import { Uint8ArrayList } from 'uint8arraylist'
import { describe, expect, it } from 'vitest'
import { sendWindowUpdatesAtHalf } from '../../src/mesh/window-updates.ts'

const DATA = 0
const WINDOW_UPDATE = 1
const WINDOW = 256 * 1024

type Log = (() => void) & { error: () => void; trace: () => void; enabled: boolean; newScope: () => Log }
const log: Log = Object.assign(() => undefined, {
  error: () => undefined,
  trace: () => undefined,
  enabled: false,
  newScope: () => log,
})

interface Header {
  type: number
  flag: number
  streamID: number
  length: number
}

function receiver(state: StreamState): { stream: YamuxStream; sent: Header[] } {
  const sent: Header[] = []
  const stream = new YamuxStream({
    id: '1',
    streamId: 1,
    state,
    direction: 'inbound',
    log,
    sendFrame: (header: Header) => {
      sent.push(header)
      return true
    },
    getRTT: () => -1,
  } as unknown as ConstructorParameters<typeof YamuxStream>[0])
  // Read everything, as our decoders do.
  stream.addEventListener('message', () => undefined)
  return { stream, sent }
}

function receive(stream: YamuxStream, bytes: number): void {
  const data = new Uint8ArrayList(new Uint8Array(bytes))
  ;(stream as unknown as { handleData(f: unknown): void }).handleData({
    header: { type: DATA, flag: 0, streamID: 1, length: bytes },
    data,
  })
}

describe('yamux window updates at half the window', () => {
  sendWindowUpdatesAtHalf()

  it('sends none for a streamed answer of small frames', () => {
    const { stream, sent } = receiver(StreamState.Established)
    for (let i = 0; i < 200; i++) receive(stream, 60)
    expect(sent.filter((h) => h.type === WINDOW_UPDATE)).toEqual([])
  })

  it('keeps the sender in credit on a long stream', () => {
    const { stream, sent } = receiver(StreamState.Established)
    let credit = WINDOW
    let lowest = credit
    for (let i = 0; i < 2000; i++) {
      const size = 1000
      expect(credit).toBeGreaterThanOrEqual(size)
      credit -= size
      const before = sent.length
      receive(stream, size)
      for (const h of sent.slice(before)) if (h.type === WINDOW_UPDATE) credit += h.length
      lowest = Math.min(lowest, credit)
    }
    // 2 MB went through a 256 KiB window; the sender never had less than half of it.
    expect(sent.some((h) => h.type === WINDOW_UPDATE)).toBe(true)
    expect(lowest).toBeGreaterThanOrEqual(WINDOW / 2 - 1000)
  })

  it('still acknowledges a new inbound stream with its first update', () => {
    const { stream, sent } = receiver(StreamState.SYNReceived)
    receive(stream, 60)
    expect(sent[0]?.type).toBe(WINDOW_UPDATE)
    expect(sent[0]?.flag).toBe(2) // ACK
  })
})
