// A monitor on a gateway's /ws/admin, as the docs' JavaScript example connects one: a WebSocket,
// an auth message on open, every message kept as it arrives.
import { waitFor } from './fixtures.ts'

export interface Monitor {
  ws: WebSocket
  messages: Array<Record<string, unknown>>
  closed: Promise<{ code: number; reason: string }>
}

/** Connects to `url` (http or ws) and sends `firstMessage` on open. */
export function monitor(url: string, firstMessage?: unknown): Monitor {
  const ws = new WebSocket(url.replace(/^http/, 'ws'))
  const messages: Array<Record<string, unknown>> = []
  ws.onopen = () => {
    if (firstMessage !== undefined) ws.send(JSON.stringify(firstMessage))
  }
  ws.onmessage = (event) => {
    messages.push(JSON.parse(String(event.data)) as Record<string, unknown>)
  }
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.onclose = (event) => resolve({ code: event.code, reason: event.reason })
  })
  return { ws, messages, closed }
}

/** A monitor on the gateway at `gatewayUrl`, authenticated with an admin key. */
export async function adminMonitor(gatewayUrl: string, adminKey: string): Promise<Monitor> {
  const m = monitor(`${gatewayUrl}/ws/admin`, { type: 'auth', token: adminKey })
  await waitFor(() => m.messages.some((x) => x.type === 'authenticated'), 5_000, 'monitor authenticated')
  return m
}
